"""OTC network figures on loopback: order propagation latency across 5 nodes, and the take
round trip.

    .venv/bin/python -m benchmarks.otc_network [--orders 200] [--takes 200] [--database-url URL]

Five nodes run in this process (one event loop, so on one core: a pessimistic setting), over
two real grapes, each with its own database on the PostgreSQL server ``--database-url``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``; databases created and dropped).

* **Propagation**: from the start of ``place()`` of a resting order on one node until each of
  the 4 others has stored it (the moment its ``ingest`` accepted it); p50/p99 over
  ``orders * 4`` deliveries. Orders are placed one at a time, from each node in turn.
* **Take round trip**: ``place()`` of an IOC order that crosses exactly one resting order of
  another node: plan, take request, the owner's grant transaction, the taker's record; p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import psycopg

from mixhouse.db.engine import with_database
from mixhouse.db.migrate import upgrade
from mixhouse.otc.devnet import start_grapes
from mixhouse.otc.node import NewOrder, NodeSettings, OtcNode
from mixhouse.otc.orders import Announcement
from mixhouse.otc.runtime import NodeConfig, running_node

PRICE = 60_000 * 10**6
BTC = 10**8
SETTINGS = NodeSettings(ttl_ms=120_000, refresh_every_s=60.0, anti_entropy_every_s=60.0, outbox_every_s=0.2)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(name: str, values_s: list[float]) -> str:
    ms = [v * 1000 for v in values_s]
    return f"{name}: n={len(ms)} p50 {statistics.median(ms):.1f} ms  p99 {_pct(ms, 0.99):.1f} ms  max {max(ms):.1f} ms"


async def _run(database_urls: list[str], orders: int, takes: int) -> None:
    seen: dict[tuple[str, str], float] = {}
    original = OtcNode.ingest

    async def timed_ingest(self: OtcNode, ann: Announcement) -> bool:
        accepted = await original(self, ann)
        if accepted:
            seen.setdefault((self.node_id, ann.order.id), time.perf_counter())
        return accepted

    OtcNode.ingest = timed_ingest  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp, start_grapes(ports=None) as grapes:
        async with AsyncExitStack() as stack:
            nodes = []
            for i, url in enumerate(database_urls):
                grape = grapes.urls[i % 2]
                config = NodeConfig(
                    grape_url=grape,
                    other_grape_urls=[u for u in grapes.urls if u != grape],
                    data_dir=Path(tmp) / f"n{i}",
                    database_url=url,
                    api_port=None,
                    settings=SETTINGS,
                )
                nodes.append((await stack.enter_async_context(running_node(config))).node)

            latencies: list[float] = []
            for k in range(orders):
                owner = nodes[k % len(nodes)]
                start = time.perf_counter()
                result = await owner.place(NewOrder("BTC/USDT", "sell", BTC, PRICE + 100 * 10**6 * (1 + k % 50)))
                others = [n for n in nodes if n is not owner]
                deadline = time.monotonic() + 30
                while not all((n.node_id, result.order_id) in seen for n in others):
                    if time.monotonic() > deadline:
                        raise AssertionError("an order did not reach every node in 30 s")
                    await asyncio.sleep(0.001)  # the arrival time is taken in ingest, not here
                latencies.extend(seen[(n.node_id, result.order_id)] - start for n in others)
            print(_summary("order propagation to 4 peers", latencies))

            # Takes: node 0 offers small buys one at a time, the taker (node 1..4) crosses each.
            round_trips: list[float] = []
            for k in range(takes):
                maker, taker = nodes[0], nodes[1 + k % 4]
                bid = await maker.place(NewOrder("BTC/USDT", "buy", 1_000_000, PRICE - 10**6 * (k + 1)))
                deadline = time.monotonic() + 30
                while (taker.node_id, bid.order_id) not in seen:
                    if time.monotonic() > deadline:
                        raise AssertionError("the bid did not reach the taker")
                    await asyncio.sleep(0.001)
                start = time.perf_counter()
                result = await taker.place(NewOrder("BTC/USDT", "sell", 1_000_000, PRICE - 10**6 * (k + 1), tif="IOC"))
                round_trips.append(time.perf_counter() - start)
                if sum(f.quantity for f in result.fills) != 1_000_000:
                    raise AssertionError(f"take {k} did not fill: {result}")
            print(_summary("take round trip (IOC crossing one order of another node)", round_trips))


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--takes", type=int, default=200)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    server: str = args.database_url
    template = f"mh_bench_tmpl_{uuid.uuid4().hex[:8]}"
    names = [f"mh_bench_{uuid.uuid4().hex[:10]}" for _ in range(5)]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{template}"')
    try:
        upgrade(with_database(server, template))
        with psycopg.connect(server, autocommit=True) as conn:
            for name in names:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        asyncio.run(_run([with_database(server, n) for n in names], args.orders, args.takes))
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            for name in [*names, template]:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
