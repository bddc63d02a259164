"""Hostile input on an OTC node's HTTP API (a real node on real grapes, its API served by
uvicorn on loopback): huge bodies, deeply nested JSON, NUL bytes, unknown ids, negative, zero
and oversized amounts, wrong types. Each gets a clear 4xx problem, nothing changes (no order,
no trade), and the node keeps serving (a valid order is placed after all of them).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from mixhouse.otc.devnet import Grapes
from tests.otc_support import BTC, PRICE, fresh_databases, start_nodes

pytestmark = pytest.mark.asyncio(loop_scope="function")

GOOD: dict[str, Any] = {"pair": "BTC/USDT", "side": "sell", "quantity": str(BTC), "price": str(PRICE)}
UNKNOWN_ID = "ab" * 32

# (what, method, path, raw body or None); every one must be refused with a 4xx.
HOSTILE_BODIES: list[tuple[str, bytes]] = [
    ("not JSON", b"{not json"),
    ("empty body", b""),
    ("a JSON string", b'"sell"'),
    ("an array", b"[1, 2, 3]"),
    ("deeply nested", b"[" * 30_000 + b"]" * 30_000),
    ("deeply nested object", b'{"a":' * 10_000 + b"1" + b"}" * 10_000),
    ("huge body", json.dumps({**GOOD, "pair": "B" * 8_000_000}).encode()),
    ("huge number", json.dumps(GOOD).replace(f'"{PRICE}"', "9" * 5_000).encode()),
    ("NUL in pair", json.dumps({**GOOD, "pair": "BTC/\u0000USDT"}).encode()),
    ("NUL in quantity", json.dumps({**GOOD, "quantity": "1\u00000"}).encode()),
    ("raw NUL bytes", b'{"pair": "BTC\x00/USDT"}'),
    ("invalid UTF-8", b'{"pair": "\xff\xfe"}'),
    ("negative quantity", json.dumps({**GOOD, "quantity": "-1"}).encode()),
    ("zero quantity", json.dumps({**GOOD, "quantity": "0"}).encode()),
    ("zero price", json.dumps({**GOOD, "price": "0"}).encode()),
    ("negative price", json.dumps({**GOOD, "price": "-60000000000"}).encode()),
    ("oversized quantity", json.dumps({**GOOD, "quantity": "9" * 40}).encode()),
    ("oversized price", json.dumps({**GOOD, "price": "9" * 40}).encode()),
    ("41 digits", json.dumps({**GOOD, "quantity": "1" * 41}).encode()),
    ("float quantity", json.dumps({**GOOD, "quantity": 0.5}).encode()),
    ("int quantity", json.dumps({**GOOD, "quantity": BTC}).encode()),
    ("decimal quantity", json.dumps({**GOOD, "quantity": "1.5"}).encode()),
    ("min_fill above quantity", json.dumps({**GOOD, "min_fill": str(2 * BTC)}).encode()),
    ("off-tick price", json.dumps({**GOOD, "price": str(PRICE + 1)}).encode()),
    ("unknown pair", json.dumps({**GOOD, "pair": "DOGE/USDT"}).encode()),
    ("unknown side", json.dumps({**GOOD, "side": "short"}).encode()),
    ("unknown tif", json.dumps({**GOOD, "tif": "GTD"}).encode()),
    ("extra field", json.dumps({**GOOD, "owner": "someone else"}).encode()),
    ("good_till in the past", json.dumps({**GOOD, "good_till_ms": 1}).encode()),
    ("good_till too large", json.dumps({**GOOD, "good_till_ms": 2**64}).encode()),
    ("good_till negative", json.dumps({**GOOD, "good_till_ms": -5}).encode()),
]

HOSTILE_REQUESTS: list[tuple[str, str, str]] = [
    ("unknown order", "GET", f"/orders/{UNKNOWN_ID}"),
    ("cancel unknown order", "DELETE", f"/orders/{UNKNOWN_ID}"),
    ("short id", "GET", "/orders/abc"),
    ("NUL in id", "DELETE", "/orders/" + "a" * 31 + "%00" + "a" * 32),
    ("upper-case id", "GET", "/orders/" + "AB" * 32),
    ("unknown pair book", "GET", "/book?pair=DOGE/USDT"),
    ("NUL in pair", "GET", "/book?pair=BTC%00/USDT"),
    ("long pair", "GET", "/book?pair=" + "B" * 5_000),
    ("no pair", "GET", "/book"),
    ("bad state", "GET", "/orders?state=%00"),
    ("bad trade filter", "GET", "/trades?order_id=zz"),
    ("bad swap filter", "GET", "/swaps?trade_id=" + "a" * 65),
]


async def test_hostile_input_gets_a_clear_4xx_and_changes_nothing(
    grapes: Grapes, pg_server_url: str, template_db: str, tmp_path: Path
) -> None:
    with fresh_databases(pg_server_url, template_db, 1) as urls:
        async with AsyncExitStack() as stack:
            (node,) = await start_nodes(stack, grapes.urls, urls, tmp_path, api=True)
            assert node.api_url is not None
            async with httpx.AsyncClient(base_url=node.api_url, trust_env=False, timeout=60) as client:
                refused: dict[str, int] = {}
                for what, body in HOSTILE_BODIES:
                    reply = await client.post("/orders", content=body, headers={"content-type": "application/json"})
                    refused[what] = reply.status_code
                    assert 400 <= reply.status_code < 500, (what, reply.status_code, reply.text[:300])
                    assert reply.headers["content-type"].startswith("application/problem+json"), what
                    problem = reply.json()
                    assert problem["status"] == reply.status_code, what
                    assert len(reply.content) < 100_000, (what, "the problem must not echo the body")
                for what, method, path in HOSTILE_REQUESTS:
                    reply = await client.request(method, path)
                    refused[what] = reply.status_code
                    assert 400 <= reply.status_code < 500, (what, reply.status_code, reply.text[:300])

                # A huge body sent chunked (no Content-Length) is refused as it arrives.
                async def chunks() -> AsyncIterator[bytes]:
                    for _ in range(200):
                        yield b"[" * 65_536

                reply = await client.post("/orders", content=chunks(), headers={"content-type": "application/json"})
                assert reply.status_code == 413, reply.text[:300]
                assert refused["huge body"] == 413
                assert refused["deeply nested"] == refused["deeply nested object"] == 400
                assert refused["unknown order"] == 404
                assert refused["cancel unknown order"] == 404
                assert refused["zero quantity"] == 422
                assert refused["unknown pair"] == 422

                # Nothing changed.
                assert await node.node.own() == []
                assert await node.node.trades() == []
                assert (await client.get("/orders")).json() == []

                # The node keeps serving: a valid order is placed and listed.
                placed = await client.post("/orders", json=GOOD)
                assert placed.status_code == 201, placed.text
                order_id = placed.json()["order_id"]
                listed = (await client.get("/orders")).json()
                assert [o["id"] for o in listed] == [order_id]
                assert (await client.get("/health")).json() == {"status": "ok"}
