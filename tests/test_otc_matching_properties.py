"""Property tests of the matching engine against a tiny, obviously correct reference model.

The reference keeps a flat list of resting orders and, for each incoming order, sorts the
crossing ones by (price, created_ms, id) and walks them with the same written rules (minimum
fills, self-trade prevention, time in force, expiry). Hypothesis drives both with random
operations (submit, add, cancel, reduce, refresh, time passing) on a small price grid where
orders collide a lot, and after every operation checks:

* the same fills (maker, quantity, price, quote amount) and the same book, in the same order;
* conservation per order (filled + remaining + cancelled = placed) and per asset (base bought
  = base sold, quote paid = quote received, both summed from the fills and from the orders);
* no crossed book at rest; FOK all or nothing; post-only never takes; IOC never rests;
  every fill respects both minimum fills; no owner trades with itself;
* ``plan_take`` changes nothing and announces exactly the fills ``submit`` then makes.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixhouse.otc.matching import (
    NEVER_MS,
    Execution,
    Fill,
    InvalidOrder,
    MatchingEngine,
    Order,
    OrderStatus,
    SelfTradePrevention,
    Side,
    TimeInForce,
    WouldCross,
    quote_amount,
)


@dataclass(frozen=True)
class Rules:
    """A toy pair: 2 base decimals, so 1 base unit at price 100..115 is worth 1 quote unit."""

    base_decimals: int = 2
    tick: int = 1
    lot: int = 1
    min_quantity: int = 1
    max_quantity: int = 60
    max_price: int = 10**6


RULES = Rules()
OWNERS = ["ann", "bob", "cyd"]


@dataclass
class RefOrder:
    id: str
    owner: str
    side: Side
    price: int
    created_ms: int
    expires_at_ms: int
    min_fill: int
    remaining: int


@dataclass
class Reference:
    """The obviously correct model: a list, sorted on every use."""

    stp: SelfTradePrevention
    resting: list[RefOrder] = field(default_factory=list)

    def _expire(self, now_ms: int) -> set[str]:
        gone = {r.id for r in self.resting if r.expires_at_ms <= now_ms}
        self.resting = [r for r in self.resting if r.id not in gone]
        return gone

    def _crossing(self, side: Side, price: int, now_ms: int, *, with_expired: bool = False) -> list[RefOrder]:
        if side is Side.BUY:
            found = [r for r in self.resting if r.side is Side.SELL and r.price <= price]
            found.sort(key=lambda r: (r.price, r.created_ms, r.id))
        else:
            found = [r for r in self.resting if r.side is Side.BUY and r.price >= price]
            found.sort(key=lambda r: (-r.price, r.created_ms, r.id))
        return [r for r in found if with_expired or r.expires_at_ms > now_ms]

    def submit(self, o: Order, now_ms: int) -> tuple[list[tuple[str, int, int]], set[str], set[str], bool]:
        """Returns (fills (maker, quantity, price), expired ids, STP-cancelled ids, rests)."""
        expired = self._expire(now_ms)
        crossing = self._crossing(o.side, o.price, now_ms)
        if o.tif is TimeInForce.POST_ONLY:
            if crossing:
                return [], expired, set(), False
            self.resting.append(self._ref(o, o.remaining))
            return [], expired, set(), True
        left = o.remaining
        fills: list[tuple[RefOrder, int]] = []
        selves: list[RefOrder] = []
        stopped = False
        for r in crossing:
            if left == 0:
                break
            if r.owner == o.owner:
                selves.append(r)
                if self.stp is SelfTradePrevention.CANCEL_TAKER:
                    stopped = True
                    break
                continue
            q = min(left, r.remaining)
            if q < left and q < o.min_fill:
                continue
            if q < r.remaining and q < r.min_fill:
                continue
            fills.append((r, q))
            left -= q
        if o.tif is TimeInForce.FOK and left:
            return [], expired, set(), False
        for r, q in fills:
            r.remaining -= q
        cancelled = set() if stopped else {r.id for r in selves}
        self.resting = [r for r in self.resting if r.remaining and r.id not in cancelled]
        rests = bool(left and not stopped and o.tif is TimeInForce.GTC and not self._crossing(o.side, o.price, now_ms))
        if rests:
            self.resting.append(self._ref(o, left))
        return [(r.id, q, r.price) for r, q in fills], expired, cancelled, rests

    @staticmethod
    def _ref(o: Order, remaining: int) -> RefOrder:
        return RefOrder(o.id, o.owner, o.side, o.price, o.created_ms, o.expires_at_ms, o.min_fill, remaining)

    def book(self, now_ms: int) -> list[tuple[str, int]]:
        """(id, remaining) of resting orders: bids best first, then asks best first."""
        bids = sorted((r for r in self.resting if r.side is Side.BUY), key=lambda r: (-r.price, r.created_ms, r.id))
        asks = sorted((r for r in self.resting if r.side is Side.SELL), key=lambda r: (r.price, r.created_ms, r.id))
        return [(r.id, r.remaining) for r in bids + asks]


order_fields = st.fixed_dictionaries(
    {
        "owner": st.sampled_from(OWNERS),
        "side": st.sampled_from([Side.BUY, Side.SELL]),
        "price": st.integers(100, 106),
        "quantity": st.integers(1, 60),
        "age": st.integers(0, 3),  # created this many ms before now: peers' clocks differ
        "ttl": st.one_of(st.none(), st.integers(1, 30)),
        "tif": st.sampled_from(list(TimeInForce)),
        "min_fill_share": st.sampled_from([0, 0, 0, 1, 2, 3]),  # min_fill = quantity * share // 4
    }
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), order_fields),
        st.tuples(st.just("submit"), order_fields),
        st.tuples(st.just("submit"), order_fields),
        st.tuples(st.just("add"), order_fields),
        st.tuples(st.just("cancel"), st.integers(0, 10**6)),
        st.tuples(st.just("reduce"), st.integers(0, 10**6), st.integers(0, 10**6)),
        st.tuples(st.just("refresh"), st.integers(0, 10**6), st.integers(1, 30)),
        st.tuples(st.just("tick"), st.integers(1, 8)),
    ),
    min_size=10,
    max_size=80,
)


@dataclass
class Ledger:
    """Every order ever placed and every fill, for the conservation checks."""

    placed: list[Order] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    reduced: Counter[str] = field(default_factory=Counter)  # filled through reduce(), per order


def _make(fields: dict[str, object], serial: int, now_ms: int) -> Order:
    quantity = fields["quantity"]
    ttl = fields["ttl"]
    assert isinstance(quantity, int)
    assert ttl is None or isinstance(ttl, int)
    share = fields["min_fill_share"]
    assert isinstance(share, int)
    tif = fields["tif"]
    assert isinstance(tif, TimeInForce)
    side = fields["side"]
    assert isinstance(side, Side)
    price = fields["price"]
    assert isinstance(price, int)
    age = fields["age"]
    assert isinstance(age, int)
    return Order(
        # Ids not in creation order, so that the id tie-break of equal timestamps matters.
        id=f"{serial * 7919 % 10007:05d}",
        owner=str(fields["owner"]),
        side=side,
        price=price,
        quantity=quantity,
        created_ms=now_ms - age,
        expires_at_ms=NEVER_MS if ttl is None else now_ms + ttl,
        tif=tif,
        min_fill=quantity * share // 4,
    )


def _book(engine: MatchingEngine) -> list[tuple[str, int]]:
    return [(o.id, o.remaining) for o in engine]


def _check_execution(execution: Execution, before: int, min_fills: dict[str, int]) -> None:
    order = execution.order
    taker_left = before
    for fill in execution.fills:
        assert fill.taker_id == order.id
        assert fill.maker_owner != fill.taker_owner, "self-trade"
        assert fill.quantity > 0
        assert fill.quote_amount == quote_amount(fill.quantity, fill.price, RULES.base_decimals) > 0
        # Both minimum fills: a smaller fill only takes all that is left of that side.
        assert fill.quantity >= min(order.min_fill, taker_left)
        taker_left -= fill.quantity
        maker_before = fill.maker_remaining + fill.quantity
        assert fill.quantity == maker_before or fill.quantity >= min(min_fills[fill.maker_id], maker_before)
        assert fill.price <= order.price if order.side is Side.BUY else fill.price >= order.price
    if order.tif is TimeInForce.FOK:
        assert (order.status is OrderStatus.FILLED) or (order.status is OrderStatus.REJECTED and not execution.fills)
    if order.tif is TimeInForce.POST_ONLY:
        assert not execution.fills
    if order.tif is TimeInForce.IOC:
        assert order.status is not OrderStatus.OPEN
    assert order.filled + order.remaining + order.cancelled == order.quantity


def _check_conservation(engine: MatchingEngine, ledger: Ledger) -> None:
    by_id = {o.id: o for o in ledger.placed}
    traded: Counter[str] = Counter()
    for fill in ledger.fills:
        traded[fill.maker_id] += fill.quantity
        traded[fill.taker_id] += fill.quantity
    for order in ledger.placed:
        assert order.filled + order.remaining + order.cancelled == order.quantity
        assert min(order.filled, order.remaining, order.cancelled) >= 0
        assert order.filled == traded[order.id] + ledger.reduced[order.id]
        assert (order.status is OrderStatus.OPEN) == (order.id in engine and engine.get(order.id) is order)
    # Per asset: the base bought equals the base sold, the quote paid the quote received.
    bought = sold = paid = received = 0
    for fill in ledger.fills:
        buyer, seller = (
            (fill.taker_id, fill.maker_id) if fill.taker_side is Side.BUY else (fill.maker_id, fill.taker_id)
        )
        assert by_id[buyer].side is Side.BUY
        assert by_id[seller].side is Side.SELL
        bought += fill.quantity
        sold += fill.quantity
        paid += fill.quote_amount
        received += fill.quote_amount
    assert bought == sold
    assert paid == received
    buys = sum(traded[o.id] for o in ledger.placed if o.side is Side.BUY)
    sells = sum(traded[o.id] for o in ledger.placed if o.side is Side.SELL)
    assert buys == sells == bought
    # Every open order that expires is in the expiry index under its time (stale entries of
    # closed or refreshed orders may be there too; expire() skips them).
    for o in engine:
        if o.expires_at_ms != NEVER_MS:
            assert any(entry is o for entry in engine._buckets[o.expires_at_ms])
    # No crossed book at rest, and each level's depth is its orders' sum.
    bid, ask = engine.best_bid(), engine.best_ask()
    assert bid is None or ask is None or bid < ask
    snapshot = engine.snapshot()
    assert sum(level.quantity for level in snapshot.bids + snapshot.asks) == sum(o.remaining for o in engine)
    assert sum(level.count for level in snapshot.bids + snapshot.asks) == len(engine)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, stp=st.sampled_from(list(SelfTradePrevention)))
def test_engine_matches_the_reference_model(ops: list[tuple[object, ...]], stp: SelfTradePrevention) -> None:
    engine = MatchingEngine(RULES, stp=stp)
    reference = Reference(stp)
    ledger = Ledger()
    now = 1_000
    serial = 0
    min_fills: dict[str, int] = {}
    for op in ops:
        kind = op[0]
        if kind == "tick":
            assert isinstance(op[1], int)
            now += op[1]
            continue
        open_ids = [o.id for o in engine]
        if kind in ("submit", "add"):
            fields = op[1]
            assert isinstance(fields, dict)
            serial += 1
            order = _make(fields, serial, now)
            min_fills[order.id] = order.min_fill
            if kind == "add":
                if order.tif is not TimeInForce.GTC and order.tif is not TimeInForce.POST_ONLY:
                    with pytest.raises(InvalidOrder, match="only GTC and post-only orders rest"):
                        engine.add(order, now_ms=now)
                    continue
                crossing = reference._crossing(order.side, order.price, now)
                if crossing:
                    with pytest.raises(WouldCross) as refused:
                        engine.add(order, now_ms=now)
                    assert set(refused.value.crossed) <= {r.id for r in crossing}
                    assert refused.value.crossed
                    continue
                engine.add(order, now_ms=now)
                ledger.placed.append(order)
                if reference._crossing(order.side, order.price, now, with_expired=True):
                    reference._expire(now)  # only expired orders stood in the way: add retires them
                reference.resting.append(reference._ref(order, order.remaining))
            else:
                before_book = _book(engine)
                incoming = copy.copy(order)  # as it was before submit changed it
                plan = engine.plan_take(copy.copy(order), now_ms=now)
                assert _book(engine) == before_book, "plan_take changed the book"
                ledger.placed.append(order)
                execution = engine.submit(order, now_ms=now)
                fills, expired, cancelled, rests = reference.submit(incoming, now)
                assert [(f.maker_id, f.quantity, f.price) for f in execution.fills] == fills
                assert {o.id for o in execution.expired} == expired & {i for i, _ in before_book}
                assert {o.id for o in execution.self_trade_cancelled} == cancelled
                assert (order.status is OrderStatus.OPEN) == rests
                if order.tif is TimeInForce.POST_ONLY:
                    assert plan.blocked == (execution.order.status is OrderStatus.REJECTED)
                else:
                    assert plan.complete == (not order.remaining and order.status is OrderStatus.FILLED)
                    if order.tif is not TimeInForce.FOK or plan.complete:
                        assert [(p.maker.id, p.quantity, p.price) for p in plan.fills] == fills
                ledger.fills.extend(execution.fills)
                _check_execution(execution, order.quantity, min_fills)
        elif open_ids:
            index = op[1]
            assert isinstance(index, int)
            target = open_ids[index % len(open_ids)]
            ref = next(r for r in reference.resting if r.id == target)
            if kind == "cancel":
                engine.cancel(target)
                reference.resting.remove(ref)
            elif kind == "reduce":
                amount = op[2]
                assert isinstance(amount, int)
                current = engine.get(target)
                assert current is not None
                new_remaining = amount % (current.remaining + 1)
                ledger.reduced[target] += current.remaining - new_remaining
                engine.reduce(target, new_remaining)
                ref.remaining = new_remaining
                if not new_remaining:
                    reference.resting.remove(ref)
            else:
                ttl = op[2]
                assert isinstance(ttl, int)
                engine.refresh(target, now + ttl)
                ref.expires_at_ms = now + ttl
        assert _book(engine) == reference.book(now)
        _check_conservation(engine, ledger)
    # Everything expires in the end (orders with an expiry), in both.
    engine.expire(now + 10**6)
    reference._expire(now + 10**6)
    assert _book(engine) == reference.book(now + 10**6)
    _check_conservation(engine, ledger)
