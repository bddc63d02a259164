"""OTC network figures on loopback: order propagation latency across 5 nodes, and the take
round trip.

    .venv/bin/python -m benchmarks.otc_network [--orders 200] [--takes 200] [--database-url URL]
                                              [--in-process]

Five nodes over two real grapes, each with its own database on the PostgreSQL server
``--database-url`` (default ``MIXHOUSE_BENCH_DATABASE_URL``, else an embedded PostgreSQL; databases
created and dropped). By default each node is its own ``mixhouse otc node`` process, driven
through its HTTP API; ``--in-process`` runs the five in this process (one event loop, so one
core for all: a pessimistic setting).

Process mode measures propagation on the database server's clock: from the owner's write of
the order's offered status (``otc_orders.updated_at`` of its row) to each peer's insert of it
(the same column of the peer's row: the transaction start of the storing ``ingest``), and the
take round trip as the ``POST /orders`` of the IOC order seen by the HTTP client.

* **Propagation**: from the start of ``place()`` of a resting order on one node until each of
  the 4 others has stored it (the moment its ``ingest`` accepted it); p50/p99 over
  ``orders * 4`` deliveries. Orders are placed one at a time, from each node in turn.
* **Take round trip**: ``place()`` of an IOC order that crosses exactly one resting order of
  another node: plan, take request, the owner's grant transaction, the taker's record; p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import psycopg

from mixhouse.db.embedded import start_embedded
from mixhouse.db.engine import with_database
from mixhouse.db.migrate import upgrade
from mixhouse.otc.devnet import start_grapes
from mixhouse.otc.node import NewOrder, NodeSettings, OtcNode
from mixhouse.otc.orders import Announcement
from mixhouse.otc.runtime import NodeConfig, running_node
from mixhouse.servers import free_port

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

    OtcNode.ingest = timed_ingest  # type: ignore[method-assign,assignment]
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


async def _run_processes(database_urls: list[str], orders: int, takes: int) -> None:
    env = {
        **os.environ,
        "MIXHOUSE_OTC_TTL_MS": "300000",
        "MIXHOUSE_OTC_REFRESH_EVERY_S": "120",  # no refresh (a new updated_at) during the run
        "MIXHOUSE_OTC_ANTI_ENTROPY_EVERY_S": "120",
        "MIXHOUSE_OTC_OUTBOX_EVERY_S": "0.2",
    }
    with tempfile.TemporaryDirectory() as tmp, start_grapes(ports=None) as grapes:
        procs: list[subprocess.Popen[bytes]] = []
        apis: list[str] = []
        try:
            for i, url in enumerate(database_urls):
                port = free_port()
                args = [sys.executable, "-m", "mixhouse", "otc", "node", "--grape", grapes.urls[i % 2]]
                args += ["--other-grape", grapes.urls[(i + 1) % 2], "--api-port", str(port)]
                args += ["--database-url", url, "--data-dir", str(Path(tmp) / f"n{i}")]
                log = (Path(tmp) / f"n{i}.log").open("wb")
                procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))  # noqa: ASYNC220 - returns at once
                apis.append(f"http://127.0.0.1:{port}")
            async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
                for api in apis:
                    deadline = time.monotonic() + 120
                    while True:
                        try:
                            if (await client.get(api + "/health")).status_code == 200:
                                break
                        except httpx.HTTPError:
                            pass  # not listening yet
                        if time.monotonic() > deadline:
                            raise AssertionError(f"node {api} did not start")
                        await asyncio.sleep(0.1)

                async def place(api: str, **order: object) -> dict[str, object]:
                    response = await client.post(api + "/orders", json={k: str(v) for k, v in order.items()})
                    response.raise_for_status()
                    return dict(response.json())

                placed: list[tuple[int, str]] = []
                for k in range(orders):
                    owner = k % len(apis)
                    price = PRICE + 100 * 10**6 * (1 + k % 50)
                    result = await place(apis[owner], pair="BTC/USDT", side="sell", quantity=BTC, price=price)
                    placed.append((owner, str(result["order_id"])))
                latencies = await _arrivals(database_urls, placed)
                print(_summary("order propagation to 4 peers (processes, DB clock)", latencies))

                round_trips: list[float] = []
                for k in range(takes):
                    maker, taker = apis[0], apis[1 + k % 4]
                    price = PRICE - 10**6 * (k + 1)
                    bid = await place(maker, pair="BTC/USDT", side="buy", quantity=1_000_000, price=price)
                    deadline = time.monotonic() + 30
                    while True:
                        book = (await client.get(taker + "/book", params={"pair": "BTC/USDT"})).json()
                        if any(o["id"] == bid["order_id"] for o in book["bids"]):
                            break
                        if time.monotonic() > deadline:
                            raise AssertionError("the bid did not reach the taker")
                        await asyncio.sleep(0.005)
                    start = time.perf_counter()
                    result = await place(
                        taker, pair="BTC/USDT", side="sell", quantity=1_000_000, price=price, tif="IOC"
                    )
                    round_trips.append(time.perf_counter() - start)
                    fills = result["fills"]
                    assert isinstance(fills, list)
                    if sum(int(f["quantity"]) for f in fills) != 1_000_000:
                        raise AssertionError(f"take {k} did not fill: {result}")
                print(_summary("take round trip (POST /orders of an IOC crossing one order, processes)", round_trips))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)


async def _arrivals(database_urls: list[str], placed: list[tuple[int, str]]) -> list[float]:
    """Seconds from the owner's offered status to each peer's stored copy, waiting for all."""
    ids = [oid for _, oid in placed]
    deadline = time.monotonic() + 60
    while True:
        times: list[dict[str, float]] = []
        for url in database_urls:
            async with await psycopg.AsyncConnection.connect(url) as conn:
                cur = await conn.execute(
                    "SELECT id, extract(epoch FROM updated_at)::float8 FROM otc_orders WHERE id = ANY(%s)", [ids]
                )
                times.append({row[0]: row[1] for row in await cur.fetchall()})
        if all(len(t) == len(ids) for t in times):
            break
        if time.monotonic() > deadline:
            raise AssertionError("some orders did not reach every node in 60 s")
        await asyncio.sleep(0.2)
    return [times[i][oid] - times[owner][oid] for owner, oid in placed for i in range(len(database_urls)) if i != owner]


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--takes", type=int, default=200)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("MIXHOUSE_BENCH_DATABASE_URL"),
        help="a server we may create databases on (default MIXHOUSE_BENCH_DATABASE_URL, else an embedded PostgreSQL)",
    )
    parser.add_argument("--in-process", action="store_true", help="run the five nodes in this process")
    args = parser.parse_args(argv)
    server: str = args.database_url or with_database(
        start_embedded(Path(tempfile.gettempdir()) / "mixhouse-bench-pg"), "postgres"
    )
    template = f"mh_bench_tmpl_{uuid.uuid4().hex[:8]}"
    names = [f"mh_bench_{uuid.uuid4().hex[:10]}" for _ in range(5)]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{template}"')
    try:
        upgrade(with_database(server, template))
        with psycopg.connect(server, autocommit=True) as conn:
            for name in names:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        run = _run if args.in_process else _run_processes
        asyncio.run(run([with_database(server, n) for n in names], args.orders, args.takes))
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            for name in [*names, template]:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
