"""Grenache RPC round trips on loopback: Python <-> Python, Node -> Python, Python -> Node.

Two real grapes (npm grenache-grape 0.9.12, free ports), peers from ``mixhouse.otc.grenache``
and Bitfinex's Node client/server (tests/interop/node_client.js, node_server.js, npm
grenache-nodejs-http 0.7.13). Every figure is one sequential call at a time (latency), each
direction with gzip off and on, a ~150-byte OTC-like payload echoed back; plus Python->Python
throughput with 32 calls in flight, and how long ``start() + ready()`` takes (announce on one
grape, visible on both). The first 20 calls of each series are warm-up, not counted.

Usage: ``python -m benchmarks.grenache [--calls 2000]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from mixhouse.otc.devnet import find_grape_script, start_grapes
from mixhouse.otc.grenache import GrenachePeer

INTEROP = Path(__file__).resolve().parents[1] / "tests" / "interop"
WARMUP = 20
PAYLOAD = {
    "action": "order",
    "args": [{"pair": "BTC/USDT", "side": "buy", "amount": "150000000", "price": "60000500000", "ttl_ms": 60000}],
}


async def _echo(_key: str, payload: Any) -> Any:
    return payload


def _quantiles(samples_ms: list[float]) -> str:
    ordered = sorted(samples_ms)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  (n={len(ordered)})"


async def _python_to(peer: GrenachePeer, address: str, calls: int, *, compress: bool) -> list[float]:
    samples = []
    for index in range(calls + WARMUP):
        started = time.perf_counter()
        await peer.request(address, PAYLOAD, compress=compress)
        if index >= WARMUP:
            samples.append((time.perf_counter() - started) * 1000)
    return samples


async def _throughput(peer: GrenachePeer, address: str, calls: int, in_flight: int = 32) -> float:
    queue = iter(range(calls))

    async def worker() -> None:
        for _ in queue:
            await peer.request(address, PAYLOAD)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return calls / (time.perf_counter() - started)


async def _node_client(grape_url: str, service: str, calls: int, *, compress: bool) -> list[float]:
    node, _script = find_grape_script()
    proc = await asyncio.create_subprocess_exec(
        str(node),
        str(INTEROP / "node_client.js"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    conf: dict[str, Any] = {"grape": grape_url, "service": service, "repeat": calls + WARMUP}
    conf["calls"] = [{"payload": PAYLOAD, "compress": compress}]
    out, _err = await proc.communicate(json.dumps(conf).encode())
    if proc.returncode != 0:
        raise RuntimeError("node_client.js failed")
    result = json.loads(out)
    if any("error" in r for r in result["results"]):
        raise RuntimeError(f"node client got {result['results']}")
    latencies: list[float] = result["latencies_ms"][WARMUP:]
    return latencies


async def _main(calls: int) -> None:
    with start_grapes(ports=None) as grapes:
        service = f"bench:grenache:{uuid.uuid4().hex[:8]}"
        ready_ms = []
        for _ in range(10):
            started = time.perf_counter()
            async with GrenachePeer(
                grape_url=grapes.urls[0], service=service, handler=_echo, other_grape_urls=grapes.urls[1:]
            ):
                ready_ms.append((time.perf_counter() - started) * 1000)
        print(f"start()+ready() (announce, visible on both grapes): {_quantiles(ready_ms)}")
        service = f"bench:grenache:{uuid.uuid4().hex[:8]}"
        async with (
            GrenachePeer(
                grape_url=grapes.urls[0], service=service, handler=_echo, other_grape_urls=grapes.urls[1:]
            ) as a,
            GrenachePeer(
                grape_url=grapes.urls[1], service=service, handler=_echo, other_grape_urls=grapes.urls[:1]
            ) as b,
        ):
            for compress in (False, True):
                samples = await _python_to(a, b.address, calls, compress=compress)
                print(f"Python -> Python  gzip {'on ' if compress else 'off'}: {_quantiles(samples)}")
            rate = await _throughput(a, b.address, calls)
            print(f"Python -> Python  32 in flight: {rate:,.0f} calls/s")
            for compress in (False, True):
                samples = await _node_client(grapes.urls[1], service, calls, compress=compress)
                print(f"Node   -> Python  gzip {'on ' if compress else 'off'}: {_quantiles(samples)}")
            node, _script = find_grape_script()
            node_service = f"bench:node:{uuid.uuid4().hex[:8]}"
            proc = await asyncio.create_subprocess_exec(
                str(node),
                str(INTEROP / "node_server.js"),
                grapes.urls[0],
                node_service,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            try:
                assert proc.stdout is not None
                line = await proc.stdout.readline()
                address = f"127.0.0.1:{int(line.split()[1])}"
                for compress in (False, True):
                    samples = await _python_to(a, address, calls, compress=compress)
                    print(f"Python -> Node    gzip {'on ' if compress else 'off'}: {_quantiles(samples)}")
            finally:
                assert proc.stdin is not None
                proc.stdin.close()
                await proc.wait()


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per series (after 20 of warm-up)")
    args = parser.parse_args()
    asyncio.run(_main(args.calls))


if __name__ == "__main__":
    main()
