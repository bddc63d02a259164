"""Interop of the OTC actions themselves with Bitfinex's Node.js Grenache client: a
``grenache-nodejs-http`` ``PeerRPCClient`` (tests/interop/node_client.js) finds a real OTC node
through a grape and asks it for its ``info``, ``digest`` and ``fetch`` (the read actions), gzip
on and off, and gets the node's own answers; malformed OTC requests get error replies and
change nothing.

The node is an :class:`~mixhouse.otc.node.OtcNode` on its own database and a Grenache peer
under a service name of its own (the session's grapes may still list nodes of other tests
under the OTC service, and Node's client picks any peer the lookup returns).
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import pytest

from mixhouse.db.engine import make_engine
from mixhouse.otc.devnet import Grapes
from mixhouse.otc.grenache import GrenachePeer
from mixhouse.otc.identity import NodeKey
from mixhouse.otc.node import NewOrder, OtcNode
from mixhouse.otc.store import announcement
from tests.otc_support import BTC, FAST, PRICE, fresh_databases
from tests.test_grenache_interop import run_node_client

pytestmark = pytest.mark.asyncio(loop_scope="function")

# No refresh or anti-entropy round during the test: the versions the client reads stay put.
QUIET = dataclasses.replace(FAST, ttl_ms=3_600_000, refresh_every_s=3_600.0, anti_entropy_every_s=3_600.0)


async def test_node_client_reads_an_otc_node_and_malformed_requests_get_errors(
    grapes: Grapes, pg_server_url: str, template_db: str, tmp_path: Path
) -> None:
    service = f"test:otc:interop:{uuid.uuid4().hex[:12]}"
    with fresh_databases(pg_server_url, template_db, 1) as (url,):
        engine = make_engine(url, pool_size=2, max_overflow=2)
        node = OtcNode(key=NodeKey.load_or_create(tmp_path / "otc_node.key"), engine=engine, settings=QUIET)
        # Announced on grape 2 and visible on grape 1 before the Node client looks up there
        # (Node's Link caches an empty lookup for 10 s).
        peer = GrenachePeer(
            grape_url=grapes.urls[1], service=service, handler=node.handle, other_grape_urls=grapes.urls[:1]
        )
        try:
            await peer.start()
            node.attach(peer)
            await peer.ready()
            await node.start()
            sell = await node.place(NewOrder("BTC/USDT", "sell", BTC, PRICE))
            buy = await node.place(NewOrder("BTC/USDT", "buy", BTC // 2, PRICE - 10**6))
            (own_sell,) = [r for r in await node.own() if r.id == sell.order_id]
            (own_buy,) = [r for r in await node.own() if r.id == buy.order_id]
            expected_fetch = [announcement(r).model_dump(mode="json") for r in (own_sell, own_buy)]

            reads: list[Any] = [
                {"action": "info", "args": []},
                {"action": "digest", "args": []},
                {"action": "fetch", "args": [[sell.order_id, buy.order_id]]},
            ]
            malformed: list[Any] = [
                "not an object",
                {"action": "info", "args": [], "extra": 1},
                {"action": "steal", "args": []},
                {"action": "fetch", "args": ["not a list of ids"]},
                {"action": "fetch", "args": [["ab" * 32] * 501]},
                {"action": "announce", "args": [{"order": {"body": {}}, "status": None}]},
                # A real announcement with its status signature broken: refused.
                {"action": "announce", "args": [{**expected_fetch[0], "status": _tampered(expected_fetch[0])}]},
                {"action": "take", "args": [{"body": {"maker_order_id": sell.order_id}}]},
                {"action": "confirm", "args": []},
            ]
            for compress in (True, False):
                calls = [{"payload": p, "compress": compress} for p in [*reads, *malformed]]
                out = await run_node_client(grapes.urls[0], service, calls)
                results = out["results"]
                info, digest, fetched = (r.get("data") for r in results[: len(reads)])
                assert info == {"node_id": node.node_id, "address": peer.address}
                assert sorted(map(tuple, digest["orders"])) == sorted(
                    [(own_sell.id, own_sell.version), (own_buy.id, own_buy.version)]
                )
                assert fetched == {"orders": expected_fetch}
                errors = [r.get("error") for r in results[len(reads) :]]
                assert all(isinstance(e, str) for e in errors), results[len(reads) :]
                assert errors[0].startswith("ERR_BAD_REQUEST")
                assert errors[1].startswith("ERR_BAD_REQUEST")
                assert errors[2].startswith("ERR_UNKNOWN_ACTION")
                assert all(e.startswith("ERR_INVALID") for e in errors[3:]), errors

            # Nothing changed: the same two orders, same versions, no trades.
            after = {r.id: (r.version, r.remaining, r.state) for r in await node.own()}
            assert after == {r.id: (r.version, r.remaining, r.state) for r in (own_sell, own_buy)}
            assert await node.trades() == []
        finally:
            await node.close()
            await peer.close()
            await engine.dispose()


def _tampered(ann: dict[str, Any]) -> dict[str, Any]:
    """The announcement's status with another remaining amount under the old signature."""
    status = dict(ann["status"])
    status["body"] = {**status["body"], "remaining": str(int(status["body"]["remaining"]) - 1)}
    return status
