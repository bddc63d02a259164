"""OTC nodes in this process over real grapes, each with its own database: distribution,
the owner-authoritative take, confirmations, cancels, bad input."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from mixhouse.audit import verify_chain
from mixhouse.db.tables import audit_log, otc_orders, otc_outbox, otc_trades
from mixhouse.otc.devnet import Grapes
from mixhouse.otc.grenache import RpcError
from mixhouse.otc.node import NewOrder, OrderNotOpen, PostOnlyWouldTake
from mixhouse.otc.orders import InvalidMessage
from mixhouse.otc.runtime import RunningNode
from mixhouse.otc.store import announcement
from tests.otc_support import BTC, PRICE, fresh_databases, start_nodes, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def _sees(node: RunningNode, order_id: str, remaining: int | None = None) -> bool:
    rows = await node.node.book("BTC/USDT")
    for r in rows:
        if r.id == order_id:
            shown = r.remaining - r.reserved if r.mine else r.remaining
            return remaining is None or shown == remaining
    return False


async def _count(node: RunningNode, table, *where) -> int:  # type: ignore[no-untyped-def]
    async with node.node.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one())


async def test_a_crossing_order_takes_from_the_owner_and_both_record_the_trade(
    grapes: Grapes, pg_server_url: str, template_db: str, tmp_path: Path
) -> None:
    with fresh_databases(pg_server_url, template_db, 3) as urls:
        async with AsyncExitStack() as stack:
            a, b, c = await start_nodes(stack, grapes.urls, urls, tmp_path)
            sell = await a.node.place(NewOrder("BTC/USDT", "sell", BTC, PRICE))
            assert sell.state == "open"
            assert not sell.fills
            for other in (b, c):
                await wait_until(partial(_sees, other, sell.order_id), what="the sell everywhere")

            # B buys 0.3 BTC at a higher limit: filled at the maker's price.
            buy = await b.node.place(NewOrder("BTC/USDT", "buy", 30_000_000, PRICE + 10**9, tif="IOC"))
            assert [f.quantity for f in buy.fills] == [30_000_000]
            assert buy.fills[0].price == PRICE
            assert buy.fills[0].quote_amount == 18_000 * 10**6
            assert buy.state == "filled"

            # The owner recorded the same trade; C learns the new remaining.
            await wait_until(lambda: _sees(c, sell.order_id, 70_000_000), what="C sees the new remaining")
            for node, role in ((a, "maker"), (b, "taker")):
                trades = await node.node.trades()
                assert [(t.id, t.role, t.quantity) for t in trades] == [(buy.fills[0].trade_id, role, 30_000_000)]

            # Both confirmations are delivered and acknowledged.
            async def confirmed() -> bool:
                rows = [*(await a.node.trades()), *(await b.node.trades())]
                return all(t.peer_confirmed and t.confirm_acked for t in rows)

            await wait_until(confirmed, what="confirmations both ways")
            assert await _count(a, otc_outbox, otc_outbox.c.delivered_at.is_(None)) == 0
            assert await _count(a, audit_log, audit_log.c.action == "otc.trade.agreed") == 1
            assert await _count(b, audit_log, audit_log.c.action == "otc.trade.agreed") == 1

            # The node's sweep seals its audit entries (once every transaction older than them
            # has ended, server-wide); the chain then verifies.
            async def sealed() -> bool:
                await b.node.sweep()
                async with b.node.engine.connect() as conn:
                    report = await verify_chain(conn, seal_first=False)
                return report.unsealed == 0 and report.verified >= 1

            await wait_until(sealed, what="B's audit entries sealed")

            # A replayed take gets the same grant, never a second fill.
            async with a.node.engine.connect() as conn:
                before = (
                    await conn.execute(select(otc_orders.c.remaining).where(otc_orders.c.id == sell.order_id))
                ).scalar_one()
            await b.node.retry_round()
            assert await _count(a, otc_trades) == 1
            assert before == 70_000_000

            # Cancel: the owner's compare-and-set; a second cancel is refused.
            await a.node.cancel(sell.order_id)
            with pytest.raises(OrderNotOpen):
                await a.node.cancel(sell.order_id)

            async def gone() -> bool:
                return not await _sees(b, sell.order_id) and not await _sees(c, sell.order_id)

            await wait_until(gone, what="the cancel everywhere")


async def test_post_only_fok_and_bad_input(
    grapes: Grapes, pg_server_url: str, template_db: str, tmp_path: Path
) -> None:
    with fresh_databases(pg_server_url, template_db, 2) as urls:
        async with AsyncExitStack() as stack:
            a, b = await start_nodes(stack, grapes.urls, urls, tmp_path)
            sell = await a.node.place(NewOrder("BTC/USDT", "sell", BTC, PRICE))
            await wait_until(lambda: _sees(b, sell.order_id), what="the sell on B")
            with pytest.raises(PostOnlyWouldTake):
                await b.node.place(NewOrder("BTC/USDT", "buy", BTC, PRICE, tif="POST_ONLY"))
            fok = await b.node.place(NewOrder("BTC/USDT", "buy", 2 * BTC, PRICE, tif="FOK"))
            assert (fok.state, fok.fills) == ("cancelled", [])
            for bad in (
                NewOrder("BTC/XYZ", "buy", BTC, PRICE),
                NewOrder("BTC/USDT", "buy", 0, PRICE),
                NewOrder("BTC/USDT", "buy", -1, PRICE),
                NewOrder("BTC/USDT", "buy", BTC, PRICE + 1),
                NewOrder("BTC/USDT", "hold", BTC, PRICE),
            ):
                with pytest.raises(InvalidMessage):
                    await b.node.place(bad)
            orders_before = await _count(b, otc_orders)

            # What a peer can send: refused with an error reply, nothing stored.
            ann = (await a.node.book("BTC/USDT"))[0]
            good = announcement(ann).model_dump(mode="json")
            forged = {**good, "status": {**good["status"], "body": {**good["status"]["body"], "remaining": "1"}}}
            for payload in (
                {"action": "announce", "args": [forged]},
                {"action": "announce", "args": [{"order": 1}]},
                {"action": "take", "args": [{"body": {}, "sig": "00"}]},
                {"action": "fetch", "args": [["x"] * 501]},
                {"action": "nope", "args": []},
                ["not", "a", "dict"],
            ):
                with pytest.raises(RpcError):
                    await b.node.handle("mixhouse:otc:v1", payload)
                with pytest.raises(RpcError):
                    await a.peer.request(b.peer.address, payload)
            assert await _count(b, otc_orders) == orders_before
            assert (await b.node.book("BTC/USDT"))[0].remaining == BTC


async def test_a_cancel_racing_takes_wins_or_loses_whole(
    grapes: Grapes, pg_server_url: str, template_db: str, tmp_path: Path
) -> None:
    with fresh_databases(pg_server_url, template_db, 3) as urls:
        async with AsyncExitStack() as stack:
            maker, t1, t2 = await start_nodes(stack, grapes.urls, urls, tmp_path)
            for _ in range(3):
                sell = await maker.node.place(NewOrder("BTC/USDT", "sell", BTC, PRICE))
                for t in (t1, t2):
                    await wait_until(partial(_sees, t, sell.order_id), what="the sell on the takers")

                async def cancel(order_id: str = sell.order_id) -> str:
                    try:
                        await maker.node.cancel(order_id)
                    except OrderNotOpen:
                        return "lost"
                    return "won"

                takes = [
                    asyncio.ensure_future(t.node.place(NewOrder("BTC/USDT", "buy", 40_000_000, PRICE, tif="IOC")))
                    for t in (t1, t2, t1)
                ]
                outcome = await cancel()
                results = await asyncio.gather(*takes)
                fills = [f.quantity for r in results for f in r.fills]
                async with maker.node.engine.connect() as conn:
                    row = (await conn.execute(select(otc_orders).where(otc_orders.c.id == sell.order_id))).one()
                owner_filled = sum(t.quantity for t in await maker.node.trades() if t.maker_order_id == sell.order_id)
                assert sum(fills) == owner_filled == BTC - row.remaining
                if outcome == "won":
                    assert row.state == "cancelled"
                else:
                    assert row.state == "filled"
                    assert owner_filled == BTC


async def test_the_http_api(grapes: Grapes, pg_server_url: str, template_db: str, tmp_path: Path) -> None:
    with fresh_databases(pg_server_url, template_db, 1) as urls:
        async with AsyncExitStack() as stack:
            (a,) = await start_nodes(stack, grapes.urls, urls, tmp_path, api=True)
            assert a.api_url is not None
            async with httpx.AsyncClient(base_url=a.api_url, trust_env=False) as client:
                assert (await client.get("/health")).json() == {"status": "ok"}
                assert (await client.get("/node")).json()["node_id"] == a.node.node_id
                assert "/orders" in (await client.get("/openapi.json")).json()["paths"]
                order = {"pair": "BTC/USDT", "side": "sell", "quantity": str(BTC), "price": str(PRICE)}
                placed = await client.post("/orders", json=order)
                assert placed.status_code == 201, placed.text
                oid = placed.json()["order_id"]
                for bad in (
                    {**order, "pair": "BTC/XYZ"},
                    {**order, "quantity": "0"},
                    {**order, "price": "-1"},
                    {**order, "extra": 1},
                ):
                    response = await client.post("/orders", json=bad)
                    assert response.status_code == 422, response.text
                    assert response.headers["content-type"].startswith("application/problem+json")
                book = (await client.get("/book", params={"pair": "BTC/USDT"})).json()
                assert [o["id"] for o in book["asks"]] == [oid]
                assert (await client.get("/book", params={"pair": "XYZ/ABC"})).status_code == 422
                assert (await client.get(f"/orders/{'0' * 64}")).status_code == 404
                assert (await client.delete(f"/orders/{oid}")).json()["state"] == "cancelled"
                assert (await client.delete(f"/orders/{oid}")).status_code == 409
                assert (await client.get("/trades")).json() == []
