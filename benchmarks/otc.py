"""Matching-engine operations per second on one core (``mixhouse.otc.matching``).

The workload, generated once per seed by driving an engine and recorded, then replayed on
fresh engines (so every run does exactly the same work):

* pair BTC/USDT (tick 0.01 USDT, lot 1 satoshi), mid price 60,000 USDT;
* a book of realistic depth built before timing: ``--depth`` resting orders (default 10,000),
  prices 1 to ~1,500 ticks from the mid (exponential, mean 200 ticks), sizes log-normal around
  0.05 BTC, 200 owners, 5% of them with a minimum fill, every order with a 10-minute expiry;
* the timed mix, by operation count: 60% place a non-crossing limit order (GTC, 5% post-only),
  30% cancel a random resting order, 10% a crossing take (70% IOC, 30% GTC whose remainder
  rests), sized to eat about three resting orders, so the depth stays level.

Order records are built before the clock starts (as a gateway would hand them over); the
timed part is ``engine.submit(order, now_ms=...)`` / ``engine.cancel(order_id)`` only.
Throughput runs time the whole replay loop (no per-op clock); a separate run times every op
with ``perf_counter_ns`` for p50/p99 latency (that run is slower by the clock's own cost).
Each figure is the median of 3 runs.

Usage: ``python -m benchmarks.otc [--seconds 3] [--seed 7] [--depth 10000]``
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from dataclasses import dataclass

from mixhouse.otc.matching import MatchingEngine, Order, Side, TimeInForce
from mixhouse.otc.pairs import pair_rules

RULES = pair_rules("BTC/USDT")
TICK = RULES.tick
MID = 60_000 * 10**6
TTL_MS = 600_000
OPS_PER_MS = 10  # the clock advances 1 ms every 10 operations

PLACE, CANCEL, TAKE = "place", "cancel", "take"


@dataclass(frozen=True, slots=True)
class OrderSpec:
    """The fields of one order to build before timing."""

    id: str
    owner: str
    side: Side
    price: int
    quantity: int
    created_ms: int
    tif: TimeInForce
    min_fill: int

    def build(self) -> Order:
        return Order(
            self.id,
            self.owner,
            self.side,
            self.price,
            self.quantity,
            self.created_ms,
            self.created_ms + TTL_MS,
            self.tif,
            self.min_fill,
        )


@dataclass(frozen=True, slots=True)
class Workload:
    """A recorded run: the orders that build the book, then the timed operations."""

    warmup: list[OrderSpec]
    ops: list[tuple[str, OrderSpec | str]]  # (PLACE|TAKE, spec) or (CANCEL, order id)
    depth_before: int
    depth_after: int


class _Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.engine = MatchingEngine(RULES)
        self.open_ids: list[str] = []
        self.position: dict[str, int] = {}
        self.serial = 0
        self.now = 1_700_000_000_000

    def _id(self) -> str:
        self.serial += 1
        return f"{self.serial:064x}"

    def _size(self) -> int:
        return max(RULES.min_quantity, int(self.rng.lognormvariate(0, 1) * 5_000_000))

    def _track(self) -> None:
        # Keep open_ids equal to the engine's open orders (fills and STP close some).
        for order_id in [i for i in self.open_ids if i not in self.engine]:
            self._forget(order_id)

    def _forget(self, order_id: str) -> None:
        index = self.position.pop(order_id)
        last = self.open_ids.pop()
        if last != order_id:
            self.open_ids[index] = last
            self.position[last] = index

    def _remember(self, order_id: str) -> None:
        self.position[order_id] = len(self.open_ids)
        self.open_ids.append(order_id)

    def place(self) -> OrderSpec:
        rng = self.rng
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        distance = (1 + int(rng.expovariate(1 / 200))) * TICK
        bid, ask = self.engine.best_bid(), self.engine.best_ask()
        mid = (bid + ask) // 2 // TICK * TICK if bid is not None and ask is not None else MID
        if side is Side.BUY:
            price = mid - distance
            if ask is not None:
                price = min(price, ask - TICK)
        else:
            price = mid + distance
            if bid is not None:
                price = max(price, bid + TICK)
        quantity = self._size()
        min_fill = quantity // 2 if rng.random() < 0.05 else 0
        tif = TimeInForce.POST_ONLY if rng.random() < 0.05 else TimeInForce.GTC
        return OrderSpec(self._id(), f"owner{rng.randrange(200)}", side, price, quantity, self.now, tif, min_fill)

    def take(self) -> OrderSpec:
        rng = self.rng
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        best = self.engine.best_ask() if side is Side.BUY else self.engine.best_bid()
        base = best if best is not None else MID
        reach = rng.randrange(0, 20) * TICK
        price = base + reach if side is Side.BUY else base - reach
        # Three typical resting orders' worth: 3 * E[lognormal(0, 1)] * 0.05 BTC.
        quantity = max(RULES.min_quantity, int(rng.uniform(0.5, 1.5) * 3 * 1.6487 * 5_000_000))
        tif = TimeInForce.IOC if rng.random() < 0.7 else TimeInForce.GTC
        return OrderSpec(self._id(), f"owner{rng.randrange(200)}", side, price, quantity, self.now, tif, 0)

    def apply(self, spec: OrderSpec) -> None:
        execution = self.engine.submit(spec.build(), now_ms=self.now)
        if execution.fills or execution.self_trade_cancelled:
            self._track()
        if execution.order.id in self.engine:
            self._remember(spec.id)


def generate(seed: int, depth: int, count: int) -> Workload:
    """Record a warm-up of ``depth`` orders and ``count`` operations (60/30/10)."""
    generator = _Generator(seed)
    warmup = []
    while len(generator.engine) < depth:
        spec = generator.place()
        warmup.append(spec)
        generator.apply(spec)
    depth_before = len(generator.engine)
    ops: list[tuple[str, OrderSpec | str]] = []
    rng = generator.rng
    for serial in range(count):
        if serial % OPS_PER_MS == 0:
            generator.now += 1
        draw = rng.random()
        if draw < 0.6 or not generator.open_ids:
            spec = generator.place()
            ops.append((PLACE, spec))
            generator.apply(spec)
        elif draw < 0.9:
            order_id = generator.open_ids[rng.randrange(len(generator.open_ids))]
            ops.append((CANCEL, order_id))
            generator.engine.cancel(order_id)
            generator._forget(order_id)
        else:
            spec = generator.take()
            ops.append((TAKE, spec))
            generator.apply(spec)
    return Workload(warmup, ops, depth_before, len(generator.engine))


def _prepared(workload: Workload) -> tuple[MatchingEngine, list[Order | str], list[int]]:
    """A fresh engine holding the warm-up book, the operations as fresh orders or ids, and the
    clock (ms) of each operation."""
    engine = MatchingEngine(RULES)
    for spec in workload.warmup:
        engine.submit(spec.build(), now_ms=spec.created_ms)
    ops: list[Order | str] = []
    clock: list[int] = []
    now = workload.warmup[-1].created_ms
    for serial, (_, item) in enumerate(workload.ops):
        if serial % OPS_PER_MS == 0:
            now += 1
        ops.append(item.build() if isinstance(item, OrderSpec) else item)
        clock.append(now)
    return engine, ops, clock


def _replay(engine: MatchingEngine, ops: list[Order | str], clock: list[int]) -> float:
    """Seconds to run every op on ``engine``."""
    submit = engine.submit
    cancel = engine.cancel
    started = time.perf_counter()
    for op, now in zip(ops, clock, strict=True):
        if op.__class__ is Order:
            submit(op, now_ms=now)
        else:
            cancel(op)  # type: ignore[arg-type]  # a str: __class__ is not narrowed by mypy
    return time.perf_counter() - started


def _throughput(workload: Workload, seconds: float) -> float:
    """Operations per second, replaying the workload on fresh engines for ``seconds``."""
    done = 0
    spent = 0.0
    while spent < seconds:
        engine, ops, clock = _prepared(workload)
        gc.collect()
        gc.disable()  # the collector's pauses are the allocator's business, not the engine's
        try:
            spent += _replay(engine, ops, clock)
        finally:
            gc.enable()
        done += len(ops)
    return done / spent


def _latencies(workload: Workload) -> dict[str, list[int]]:
    """Nanoseconds of every operation, by kind."""
    engine, ops, clock = _prepared(workload)
    submit = engine.submit
    cancel = engine.cancel
    samples: dict[str, list[int]] = {PLACE: [], CANCEL: [], TAKE: []}
    clock_ns = time.perf_counter_ns
    for (kind, _), op, now in zip(workload.ops, ops, clock, strict=True):
        started = clock_ns()
        if op.__class__ is Order:
            submit(op, now_ms=now)
        else:
            cancel(op)  # type: ignore[arg-type]  # a str: __class__ is not narrowed by mypy
        samples[kind].append(clock_ns() - started)
    return samples


def _percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per run (3 runs)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--depth", type=int, default=10_000, help="resting orders before timing")
    parser.add_argument("--ops", type=int, default=200_000, help="operations in the recorded workload")
    args = parser.parse_args()

    workload = generate(args.seed, args.depth, args.ops)
    kinds = [kind for kind, _ in workload.ops]
    mix = ", ".join(f"{kind} {100 * kinds.count(kind) / len(kinds):.1f}%" for kind in (PLACE, CANCEL, TAKE))
    print(f"workload: seed {args.seed}, {len(kinds):,} ops ({mix})")
    print(f"book: {workload.depth_before:,} resting orders before, {workload.depth_after:,} after")
    rates = [_throughput(workload, args.seconds) for _ in range(3)]
    print(
        f"throughput: {statistics.median(rates):,.0f} ops/s median of 3 ({', '.join(f'{rate:,.0f}' for rate in rates)})"
    )
    runs = [_latencies(workload) for _ in range(3)]
    for kind in (PLACE, CANCEL, TAKE, "all"):
        p50 = statistics.median(
            _percentile([n for s in run.values() for n in s] if kind == "all" else run[kind], 0.5) for run in runs
        )
        p99 = statistics.median(
            _percentile([n for s in run.values() for n in s] if kind == "all" else run[kind], 0.99) for run in runs
        )
        print(f"latency {kind:>6}: p50 {p50:.2f} us, p99 {p99:.2f} us (median of 3, per-op clock included)")


if __name__ == "__main__":
    main()
