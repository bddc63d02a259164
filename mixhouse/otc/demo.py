"""``make demo-otc`` (``mixhouse otc demo``): two grapes, three nodes, crossing orders placed
on different nodes, the books and the fills printed as they happen.

Each node has its own key and its own database: an embedded PostgreSQL per node in a
temporary directory, or, with ``MIXHOUSE_DATABASE_URL`` set, a fresh database per node on
that server (dropped at the end). Exit 0 once every trade is recorded and confirmed on both
sides; non-zero if that does not happen within ``give_up_after`` seconds.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path

import psycopg

from mixhouse.db.engine import with_database
from mixhouse.money import format_amount
from mixhouse.otc.devnet import start_grapes
from mixhouse.otc.node import NewOrder, NodeSettings, PlaceResult
from mixhouse.otc.pairs import pair_rules
from mixhouse.otc.runtime import NodeConfig, RunningNode, running_node

NAMES = ("alice", "bob", "carol")
BTC = 10**8
USDT = 10**6
SETTINGS = NodeSettings(ttl_ms=30_000, refresh_every_s=5.0, anti_entropy_every_s=2.0, outbox_every_s=0.2)


class DemoFailed(AssertionError):
    """The network did not reach the expected state in time."""


@contextmanager
def _databases(server_url: str | None, count: int) -> Iterator[list[str | None]]:
    if server_url is None:
        yield [None] * count
        return
    names = [f"mh_otc_demo_{uuid.uuid4().hex[:10]}" for _ in range(count)]
    with psycopg.connect(server_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield [with_database(server_url, n) for n in names]
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _until(check: Callable[[], object], what: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)  # poll interval, bounded by the deadline
    raise DemoFailed(f"timed out waiting for {what}")


def _price(p: int) -> str:
    return format_amount(p, 6) + " USDT"


def _btc(q: int) -> str:
    return format_amount(q, 8) + " BTC"


class Demo:
    """The running demo: its nodes by name, and what it prints."""

    def __init__(self, nodes: dict[str, RunningNode], echo: Callable[[str], None]) -> None:
        self.nodes = nodes
        self.echo = echo
        self.names: dict[str, str] = {str(n.node.node_id): name for name, n in nodes.items()}

    async def print_book(self, viewer: str) -> None:
        rows = await self.nodes[viewer].node.book("BTC/USDT")
        self.echo(f"  book BTC/USDT as {viewer} sees it:")
        asks = sorted((r for r in rows if r.side == "sell"), key=lambda r: -r.price)
        bids = [r for r in rows if r.side == "buy"]
        for label, side in (("ask", asks), ("bid", bids)):
            for r in side:
                left = r.remaining - r.reserved if r.mine else r.remaining
                self.echo(
                    f"    {label} {_price(r.price):>16} x {_btc(left):>14}  ({self.names.get(r.owner, r.owner[:8])})"
                )
        if not rows:
            self.echo("    (empty)")

    def print_result(self, who: str, what: str, result: PlaceResult) -> None:
        self.echo(f"{who} {what}: order {result.order_id[:12]} {result.state}, {_btc(result.remaining)} open")
        rules = pair_rules("BTC/USDT")
        for f in result.fills:
            quote = format_amount(f.quote_amount, rules.quote_decimals)
            self.echo(
                f"  fill {_btc(f.quantity)} at {_price(f.price)} = {quote}"
                f" USDT from {self.names.get(f.maker_node, f.maker_node[:8])} (trade {f.trade_id[:12]})"
            )

    async def visible_everywhere(self, order_id: str) -> bool:
        for running in self.nodes.values():
            if not any(r.id == order_id for r in await running.node.book("BTC/USDT")):
                return False
        return True


async def _scenario(demo: Demo, deadline: float) -> None:
    alice, bob, carol = (demo.nodes[n].node for n in NAMES)
    demo.echo("alice sells 1 BTC at 60,000 and 0.5 BTC at 60,100; carol bids 0.4 BTC at 59,900")
    resting = [
        await alice.place(NewOrder("BTC/USDT", "sell", BTC, 60_000 * USDT)),
        await alice.place(NewOrder("BTC/USDT", "sell", BTC // 2, 60_100 * USDT)),
        await carol.place(NewOrder("BTC/USDT", "buy", 40_000_000, 59_900 * USDT)),
    ]
    for r in resting:
        await _until(partial(demo.visible_everywhere, r.order_id), "the orders on every node", deadline)
    await demo.print_book("bob")

    result = await bob.place(NewOrder("BTC/USDT", "buy", 120_000_000, 60_100 * USDT))
    demo.print_result("bob", "buys 1.2 BTC up to 60,100 (GTC)", result)
    if sum(f.quantity for f in result.fills) != 120_000_000:
        raise DemoFailed("bob's buy should have filled 1.2 BTC")

    result = await alice.place(NewOrder("BTC/USDT", "sell", 25_000_000, 59_900 * USDT, tif="IOC"))
    demo.print_result("alice", "sells 0.25 BTC down to 59,900 (IOC)", result)
    if sum(f.quantity for f in result.fills) != 25_000_000:
        raise DemoFailed("alice's sell should have filled 0.25 BTC against carol's bid")

    async def confirmed() -> bool:
        trades = [t for n in demo.nodes.values() for t in await n.node.trades()]
        return len(trades) == 6 and all(t.peer_confirmed and t.confirm_acked for t in trades)

    await _until(confirmed, "every trade confirmed by both sides", deadline)
    remaining = resting[1].order_id
    await _until(
        partial(_shows, demo, remaining, 30_000_000),
        "alice's 60,100 ask at 0.3 BTC on every node",
        deadline,
    )
    for name in NAMES:
        await demo.print_book(name)
    demo.echo("trades (each recorded by both sides, confirmed and acknowledged both ways):")
    for name in NAMES:
        for t in await demo.nodes[name].node.trades():
            demo.echo(
                f"  {name:<5} {t.role:<5} {_btc(t.quantity):>14} at {_price(t.price)}"
                f"  {demo.names[t.maker_node]} -> {demo.names[t.taker_node]}  state {t.state}  trade {t.id[:12]}"
            )


async def _shows(demo: Demo, order_id: str, remaining: int) -> bool:
    for running in demo.nodes.values():
        rows = [r for r in await running.node.book("BTC/USDT") if r.id == order_id]
        if not rows or (rows[0].remaining - rows[0].reserved if rows[0].mine else rows[0].remaining) != remaining:
            return False
    return True


@asynccontextmanager
async def _nodes(
    grape_urls: list[str], databases: list[str | None], root: Path
) -> AsyncIterator[dict[str, RunningNode]]:
    async with AsyncExitStack() as stack:
        nodes = {}
        for i, (name, url) in enumerate(zip(NAMES, databases, strict=True)):
            grape = grape_urls[i % 2]
            config = NodeConfig(
                grape_url=grape,
                other_grape_urls=[u for u in grape_urls if u != grape],
                data_dir=root / name,
                database_url=url,
                api_port=0,
                settings=SETTINGS,
            )
            nodes[name] = await stack.enter_async_context(running_node(config))
        yield nodes


async def run_otc_demo(*, database_server_url: str | None, give_up_after: float, echo: Callable[[str], None]) -> int:
    """Run the demo; 0 on success, 1 if the network did not get there in time."""
    deadline = time.monotonic() + give_up_after
    with tempfile.TemporaryDirectory(prefix="mixhouse-otc-demo-") as tmp:
        root = Path(tmp)
        with start_grapes(ports=None, log_dir=root) as grapes, _databases(database_server_url, 3) as databases:
            echo(f"grapes: {', '.join(grapes.urls)}")
            async with _nodes(list(grapes.urls), databases, root) as nodes:
                for name, running in nodes.items():
                    node_id = running.node.node_id[:16]
                    echo(f"{name}: node {node_id} grenache {running.peer.address} API {running.api_url}")
                demo = Demo(nodes, echo)
                try:
                    await _scenario(demo, deadline)
                except DemoFailed as exc:
                    echo(f"demo failed: {exc}")
                    return 1
    echo("demo done")
    return 0
