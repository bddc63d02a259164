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
Throughput runs time the whole replay loop (no per-op clock, the garbage collector on); a
separate run times every op with ``perf_counter_ns`` for p50/p99 latency (that run is slower
by the clock's own cost). The same stream also runs on a naive sorted-list book, interleaved
with the engine's runs so both see the same load on a shared machine. Each figure is the
median of 3 runs.

Usage: ``python -m benchmarks.otc [--seconds 3] [--seed 7] [--depth 10000]``
"""

from __future__ import annotations

import argparse
import bisect
import gc
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mixhouse.otc.matching import MatchingEngine, Order, Side, TimeInForce
from mixhouse.otc.pairs import pair_rules

RULES = pair_rules("BTC/USDT")
TICK = RULES.tick
MID = 60_000 * 10**6
TTL_MS = 600_000
OPS_PER_MS = 10  # the clock advances 1 ms every 10 operations

PLACE, CANCEL, TAKE = "place", "cancel", "take"
Engine = Any  # MatchingEngine or NaiveBook: submit(order, now_ms=...) and cancel(order_id)


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
        reach = 50 * TICK
        price = base + reach if side is Side.BUY else base - reach
        owner = f"owner{rng.randrange(200)}"
        # Eat 1 to 5 resting orders (3 on average: the depth stays level), 30% of the time
        # plus part of the next one.
        probe = Order("probe", owner, side, price, RULES.max_quantity, self.now)
        makers = [planned.quantity for planned in self.engine.plan_take(probe, now_ms=self.now).fills]
        eaten = rng.randint(1, 5)
        quantity = sum(makers[:eaten])
        if len(makers) > eaten and rng.random() < 0.3:
            quantity += makers[eaten] // 2
        quantity = max(RULES.min_quantity, quantity)
        tif = TimeInForce.IOC if rng.random() < 0.7 else TimeInForce.GTC
        return OrderSpec(self._id(), owner, side, price, quantity, self.now, tif, 0)

    def apply(self, spec: OrderSpec) -> None:
        execution = self.engine.submit(spec.build(), now_ms=self.now)
        for fill in execution.fills:
            if not fill.maker_remaining:
                self._forget(fill.maker_id)
        for closed in (*execution.self_trade_cancelled, *execution.expired):
            self._forget(closed.id)
        if execution.order.id in self.engine:
            self._remember(spec.id)


def generate(seed: int, depth: int, count: int) -> Workload:
    """Record a warm-up of ``depth`` orders and ``count`` operations (60/30/10)."""
    generator = _Generator(seed)
    warmup: list[OrderSpec] = []
    while len(generator.engine) < depth:
        if len(warmup) % OPS_PER_MS == 0:
            generator.now += 1
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


def _prepared(
    workload: Workload, make: Callable[[], Engine] = lambda: MatchingEngine(RULES)
) -> tuple[Engine, list[Order | str], list[int]]:
    """A fresh engine holding the warm-up book, the operations as fresh orders or ids, and the
    clock (ms) of each operation."""
    engine = make()
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


class NaiveBook:
    """The baseline, a plain pure-Python book: per side a dict price -> list of orders (FIFO:
    ``append``, ``pop(0)`` when filled, ``list.remove`` on cancel) and the sorted list of prices
    (``bisect.insort``, ``remove`` when a level empties); GTC/IOC/post-only only: no minimum
    fills, self-trade prevention, expiry or validation. It runs the same stream, interleaved
    with the engine's runs, for a same-run comparison on a shared machine."""

    def __init__(self) -> None:
        self.levels: dict[Side, dict[int, list[Order]]] = {Side.BUY: {}, Side.SELL: {}}
        self.prices: dict[Side, list[int]] = {Side.BUY: [], Side.SELL: []}
        self.orders: dict[str, Order] = {}

    def submit(self, order: Order, *, now_ms: int) -> list[tuple[str, int, int]]:  # noqa: ARG002 - the engine's signature
        buy = order.side is Side.BUY
        other = Side.SELL if buy else Side.BUY
        levels, prices = self.levels[other], self.prices[other]
        fills: list[tuple[str, int, int]] = []
        while prices and order.remaining:
            best = prices[0] if buy else prices[-1]
            if (best > order.price) if buy else (best < order.price):
                break
            if order.tif is TimeInForce.POST_ONLY:
                return fills
            queue = levels[best]
            maker = queue[0]
            quantity = min(maker.remaining, order.remaining)
            maker.remaining -= quantity
            order.remaining -= quantity
            fills.append((maker.id, quantity, quantity * best // 10**RULES.base_decimals))
            if not maker.remaining:
                queue.pop(0)
                del self.orders[maker.id]
                if not queue:
                    del levels[best]
                    prices.remove(best)
        if order.remaining and order.tif is not TimeInForce.IOC:
            own = self.levels[order.side]
            level = own.get(order.price)
            if level is None:
                level = own[order.price] = []
                bisect.insort(self.prices[order.side], order.price)
            level.append(order)
            self.orders[order.id] = order
        return fills

    def cancel(self, order_id: str) -> None:
        order = self.orders.pop(order_id)
        queue = self.levels[order.side][order.price]
        queue.remove(order)
        if not queue:
            del self.levels[order.side][order.price]
            self.prices[order.side].remove(order.price)


def _replay(engine: Engine, ops: list[Order | str], clock: list[int]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to run every op on ``engine``."""
    submit = engine.submit
    cancel = engine.cancel
    started, started_cpu = time.perf_counter(), time.process_time()
    for op, now in zip(ops, clock, strict=True):
        if op.__class__ is Order:
            submit(op, now_ms=now)
        else:
            cancel(op)
    return time.perf_counter() - started, time.process_time() - started_cpu


def _throughput(workload: Workload, seconds: float, make: Callable[[], Engine]) -> tuple[float, float]:
    """(operations per wall second, per CPU second), replaying the workload on fresh engines
    for ``seconds`` of wall time."""
    done = 0
    spent = spent_cpu = 0.0
    while spent < seconds:
        engine, ops, clock = _prepared(workload, make)
        gc.collect()  # the previous run's garbage is not this run's cost; the collector stays on
        wall, cpu = _replay(engine, ops, clock)
        spent += wall
        spent_cpu += cpu
        done += len(ops)
    return done / spent, done / spent_cpu


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
            cancel(op)
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
    variants: list[tuple[str, Callable[[], Engine]]] = [
        ("engine (mixhouse.otc.matching)", lambda: MatchingEngine(RULES)),
        ("naive book (baseline, dict price -> list)", NaiveBook),
    ]
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in variants}
    for _ in range(3):  # interleaved, so that both see the same machine load
        for name, make in variants:
            rates[name].append(_throughput(workload, args.seconds, make))
    for name, measured in rates.items():
        cpu = sorted(rate for _, rate in measured)
        wall = sorted(rate for rate, _ in measured)
        print(
            f"throughput {name}: {cpu[1]:,.0f} ops per CPU second (one core), {wall[1]:,.0f} ops per wall"
            f" second; median of 3 (CPU {', '.join(f'{rate:,.0f}' for rate in cpu)})"
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
