"""The OTC network as processes: ``mixhouse otc node`` children over two real grapes, each
with its own database, driven through their HTTP APIs. Convergence of 5 nodes, the race of
20 takers on one order, SIGKILL in the middle of takes, a late joiner, a partitioned node,
an offline maker's orders expiring everywhere."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mixhouse.otc.devnet import Grapes
from mixhouse.servers import free_port
from tests.otc_support import BTC, FAST, PRICE, NodeProcess, fresh_databases, wait_until

pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.timeout(600)]
TICK = 10_000


@pytest.fixture
def cluster(grapes: Grapes, pg_server_url: str, template_db: str, tmp_path: Path) -> Iterator[Any]:
    """A factory of node processes (``cluster(n)``), each on its own database; all stopped after."""
    started: list[NodeProcess] = []
    with fresh_databases(pg_server_url, template_db, 6) as urls:

        def make(count: int) -> list[NodeProcess]:
            made = []
            for _ in range(count):
                i = len(started)
                grape_urls = grapes.urls if i % 2 == 0 else list(reversed(grapes.urls))
                node = NodeProcess(
                    grape_urls=grape_urls, database_url=urls[i], data_dir=tmp_path / f"n{i}", api_port=free_port()
                )
                node.start()
                started.append(node)
                made.append(node)
            return made

        try:
            yield make
        finally:
            for node in started:
                if node.proc is not None and node.proc.poll() is None:
                    node.proc.send_signal(signal.SIGCONT)
                node.stop()


async def _get(client: httpx.AsyncClient, node: NodeProcess, path: str, **params: Any) -> Any:
    response = await client.get(node.api_url + path, params=params, timeout=30)
    response.raise_for_status()
    return response.json()


async def _place(client: httpx.AsyncClient, node: NodeProcess, **order: Any) -> Any:
    body = {k: str(v) if k in {"quantity", "price", "min_fill"} else v for k, v in order.items()}
    response = await client.post(node.api_url + "/orders", json=body, timeout=120)
    assert response.status_code == 201, response.text
    return response.json()


async def _book_state(client: httpx.AsyncClient, node: NodeProcess) -> set[tuple[str, str]]:
    book = await _get(client, node, "/book", pair="BTC/USDT")
    return {(o["id"], o["remaining"]) for o in book["bids"] + book["asks"]}


async def _settled(client: httpx.AsyncClient, nodes: list[NodeProcess]) -> bool:
    """Every trade is on both sides, confirmed both ways, no take unanswered."""
    by_node = [await _get(client, n, "/trades") for n in nodes]
    trades = [t for ts in by_node for t in ts]
    if not all(t["peer_confirmed"] and t["confirm_acked"] for t in trades):
        return False
    roles = Counter(t["id"] for t in trades)
    orders = [o for n in nodes for o in await _get(client, n, "/orders")]
    return all(c == 2 for c in roles.values()) and all(o["pending"] == "0" for o in orders)


async def _check_accounts(client: httpx.AsyncClient, nodes: list[NodeProcess]) -> list[dict[str, Any]]:
    """Fills per order, from the owner's trades, equal the owner's quantity - remaining, and
    maker and taker recorded the same quantity and price for each trade."""
    trades: dict[str, dict[str, Any]] = {}
    for node in nodes:
        for t in await _get(client, node, "/trades"):
            other = trades.setdefault(t["id"], t)
            assert (other["quantity"], other["price"], other["maker_order_id"], other["taker_order_id"]) == (
                t["quantity"],
                t["price"],
                t["maker_order_id"],
                t["taker_order_id"],
            )
    filled: Counter[str] = Counter()
    for t in trades.values():
        filled[t["maker_order_id"]] += int(t["quantity"])
        filled[t["taker_order_id"]] += int(t["quantity"])
    orders = [o for n in nodes for o in await _get(client, n, "/orders")]
    for o in orders:
        assert filled[o["id"]] <= int(o["quantity"]), "over-filled"
        if o["state"] in {"open", "filled"}:
            assert int(o["quantity"]) - int(o["remaining"]) == filled[o["id"]], o
    return list(trades.values())


async def test_five_nodes_converge_and_the_fills_add_up(cluster: Any) -> None:
    nodes = cluster(5)
    rng = random.Random(9)
    async with httpx.AsyncClient(trust_env=False) as client:
        await asyncio.gather(*(n.ready() for n in nodes))

        async def trader(node: NodeProcess) -> None:
            for _ in range(8):
                await _place(
                    client,
                    node,
                    pair="BTC/USDT",
                    side=rng.choice(["buy", "sell"]),
                    quantity=rng.randrange(1, 20) * 10_000_000,
                    price=PRICE + rng.randrange(-5, 6) * TICK,
                    tif=rng.choice(["GTC", "GTC", "GTC", "IOC"]),
                )

        await asyncio.gather(*(trader(n) for n in nodes))

        async def converged() -> bool:
            states = [await _book_state(client, n) for n in nodes]
            return all(s == states[0] for s in states) and await _settled(client, nodes)

        await wait_until(converged, timeout_s=120, what="the same book on 5 nodes and every trade confirmed")
        trades = await _check_accounts(client, nodes)
        assert trades, "random crossing orders made no trade"


async def test_twenty_takers_on_four_nodes_race_for_one_order(cluster: Any) -> None:
    maker, *takers = cluster(5)
    async with httpx.AsyncClient(trust_env=False) as client:
        await asyncio.gather(*(n.ready() for n in (maker, *takers)))
        rng = random.Random(20)
        for _ in range(3):
            sell = await _place(client, maker, pair="BTC/USDT", side="sell", quantity=BTC, price=PRICE)

            async def everywhere(order_id: str = sell["order_id"]) -> bool:
                books = [await _book_state(client, t) for t in takers]
                return all((order_id, str(BTC)) in b for b in books)

            await wait_until(everywhere, what="the sell on every taker node")
            asks = [rng.randrange(1, 15) * 1_000_000 for _ in range(20)]
            results = await asyncio.gather(
                *(
                    _place(client, takers[i % 4], pair="BTC/USDT", side="buy", quantity=q, price=PRICE, tif="IOC")
                    for i, q in enumerate(asks)
                )
            )
            await wait_until(lambda: _settled(client, [maker, *takers]), what="the race settled")
            owner_trades = [t for t in await _get(client, maker, "/trades") if t["maker_order_id"] == sell["order_id"]]
            owner_fill = {t["taker_order_id"]: int(t["quantity"]) for t in owner_trades}
            assert sum(owner_fill.values()) <= BTC
            taker_fill = Counter[str]()
            for t in takers:
                for trade in await _get(client, t, "/trades"):
                    taker_fill[trade["taker_order_id"]] += int(trade["quantity"])
            for result, asked in zip(results, asks, strict=True):
                oid = result["order_id"]
                # At once: what was granted, unless a reply was lost (then it is pending and
                # asked again); in the end, each taker node records exactly the owner's fill.
                learned_now = sum(int(f["quantity"]) for f in result["fills"])
                if result["pending"] == "0":
                    assert learned_now == owner_fill.get(oid, 0)
                assert learned_now <= owner_fill.get(oid, 0) <= asked
                assert taker_fill[oid] == owner_fill.get(oid, 0)
            order = await _get(client, maker, f"/orders/{sell['order_id']}")
            assert int(order["remaining"]) == BTC - sum(owner_fill.values())
            if sum(asks) >= BTC:
                assert order["state"] == "filled"


@pytest.mark.parametrize("victim", ["maker", "taker"])
async def test_sigkill_in_the_middle_of_takes_loses_and_doubles_nothing(cluster: Any, victim: str) -> None:
    maker, taker = cluster(2)
    async with httpx.AsyncClient(trust_env=False) as client:
        await asyncio.gather(maker.ready(), taker.ready())
        sells = [
            await _place(client, maker, pair="BTC/USDT", side="sell", quantity=BTC, price=PRICE + i * TICK)
            for i in range(5)
        ]

        async def seen() -> bool:
            return {(s["order_id"], str(BTC)) for s in sells} <= await _book_state(client, taker)

        await wait_until(seen, what="the sells on the taker")
        killed = maker if victim == "maker" else taker

        async def buy(i: int) -> Any:
            try:
                return await _place(
                    client, taker, pair="BTC/USDT", side="buy", quantity=30_000_000, price=PRICE + 10 * TICK, tif="IOC"
                )
            except httpx.HTTPError:
                return None  # the taker's node died under this request

        async def kill_once_trading() -> None:
            async def traded() -> bool:
                return bool(await _get(client, maker, "/trades"))

            await wait_until(traded, what="a first trade")
            killed.kill()

        await asyncio.gather(*(buy(i) for i in range(12)), kill_once_trading())
        killed.start()
        await killed.ready()
        await wait_until(lambda: _settled(client, [maker, taker]), timeout_s=120, what="both sides settled")
        trades = await _check_accounts(client, [maker, taker])
        assert trades
        for s in sells:
            order = await _get(client, maker, f"/orders/{s['order_id']}")
            filled = sum(int(t["quantity"]) for t in trades if t["maker_order_id"] == s["order_id"])
            assert int(order["remaining"]) == BTC - filled


async def test_late_joiner_partition_and_offline_maker(cluster: Any) -> None:
    a, b, c = cluster(3)
    async with httpx.AsyncClient(trust_env=False) as client:
        await asyncio.gather(a.ready(), b.ready(), c.ready())
        placed = [
            await _place(client, a, pair="BTC/USDT", side="sell", quantity=BTC, price=PRICE + i * TICK)
            for i in range(3)
        ] + [
            await _place(client, b, pair="BTC/USDT", side="buy", quantity=BTC, price=PRICE - (i + 1) * TICK)
            for i in range(3)
        ]

        # A late joiner syncs the whole book by anti-entropy (nothing new is sent meanwhile).
        (late,) = cluster(1)
        await late.ready()
        wanted = {(p["order_id"], str(BTC)) for p in placed}

        async def late_synced() -> bool:
            return wanted <= await _book_state(client, late)

        await wait_until(late_synced, what="the late joiner's book")

        # A partitioned node (stopped) misses a cancel and a new order, then catches up.
        assert c.proc is not None
        c.proc.send_signal(signal.SIGSTOP)
        try:
            response = await client.delete(f"{a.api_url}/orders/{placed[0]['order_id']}", timeout=60)
            assert response.status_code == 200, response.text
            extra = await _place(client, b, pair="BTC/USDT", side="buy", quantity=BTC, price=PRICE - 9 * TICK)
        finally:
            c.proc.send_signal(signal.SIGCONT)
        expected = (wanted - {(placed[0]["order_id"], str(BTC))}) | {(extra["order_id"], str(BTC))}

        async def caught_up() -> bool:
            return await _book_state(client, c) == expected

        await wait_until(caught_up, what="the partitioned node caught up")

        # The maker goes away for good: its orders leave every other book within the TTL.
        a.kill()
        a_orders = {p["order_id"] for p in placed[:3]}

        async def expired_everywhere() -> bool:
            for node in (b, c, late):
                if {oid for oid, _ in await _book_state(client, node)} & a_orders:
                    return False
            return True

        await wait_until(
            expired_everywhere, timeout_s=FAST.ttl_ms / 1000 * 2 + 60, what="the offline maker's orders expired"
        )
        for node in (b, c, late):
            assert {(p["order_id"], str(BTC)) for p in placed[3:]} <= await _book_state(client, node)


async def test_the_cli_talks_to_its_node(cluster: Any) -> None:
    (node,) = cluster(1)
    await node.ready()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mixhouse", "otc", *args, "--node", node.api_url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    placed = await asyncio.to_thread(
        cli, "order", "place", "--pair", "BTC/USDT", "--side", "buy", "--quantity", "2500000", "--price", str(PRICE)
    )
    assert placed.returncode == 0, placed.stderr
    oid = json.loads(placed.stdout)["order_id"]
    book = await asyncio.to_thread(cli, "book", "--pair", "BTC/USDT")
    assert book.returncode == 0
    assert "bids 1" in book.stdout
    assert oid[:12] in book.stdout
    listed = await asyncio.to_thread(cli, "order", "list")
    assert [o["id"] for o in json.loads(listed.stdout)] == [oid]
    bad = await asyncio.to_thread(
        cli, "order", "place", "--pair", "BTC/XYZ", "--side", "buy", "--quantity", "1", "--price", "1"
    )
    assert bad.returncode == 1
    assert "unknown pair" in bad.stderr
    cancelled = await asyncio.to_thread(cli, "order", "cancel", oid)
    assert json.loads(cancelled.stdout)["state"] == "cancelled"
    trades = await asyncio.to_thread(cli, "trades")
    assert json.loads(trades.stdout) == []
