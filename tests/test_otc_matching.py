"""The matching engine's rules, one example each (the properties are in
test_otc_matching_properties.py): priority, partial fills, time in force, minimum fills,
self-trade prevention, expiry, the pair's rules, rounding, and the node's calls (plan_take,
add, reduce, cancel, refresh)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mixhouse.errors import IllegalTransition, InvalidInput, NotFound
from mixhouse.otc.matching import (
    NEVER_MS,
    DuplicateOrder,
    InvalidOrder,
    InvalidPrice,
    InvalidQuantity,
    InvalidReduction,
    LevelDepth,
    MatchingEngine,
    Order,
    OrderExpired,
    OrderStatus,
    Reason,
    SelfTradePrevention,
    Side,
    TimeInForce,
    UnknownOrder,
    WouldCross,
    min_price,
    quote_amount,
)
from mixhouse.otc.pairs import pair_rules

BTC_USDT = pair_rules("BTC/USDT")  # tick 0.01 USDT, lot 1 sat, min 10,000 sat
USDT = 10**6
P = 60_000 * USDT  # 60,000 USDT per BTC
CENT = 10_000
Q = 100_000  # 0.001 BTC
NOW = 1_700_000_000_000


def order(
    order_id: str,
    side: Side,
    price: int = P,
    quantity: int = Q,
    *,
    owner: str | None = None,
    created_ms: int = NOW,
    tif: TimeInForce = TimeInForce.GTC,
    min_fill: int = 0,
    expires_at_ms: int = NEVER_MS,
) -> Order:
    return Order(
        order_id,
        owner or f"owner-{order_id}",
        side,
        price,
        quantity,
        created_ms,
        expires_at_ms,
        tif,
        min_fill,
    )


def engine(stp: SelfTradePrevention = SelfTradePrevention.CANCEL_RESTING) -> MatchingEngine:
    return MatchingEngine(BTC_USDT, stp=stp)


def book_of(e: MatchingEngine) -> list[tuple[str, int]]:
    return [(o.id, o.remaining) for o in e]


def test_price_then_time_priority_partial_fills_and_the_remainder_rests() -> None:
    e = engine()
    for o in [
        order("s-late", Side.SELL, P, created_ms=NOW + 2),
        order("s-early", Side.SELL, P, created_ms=NOW + 1),  # learned later, created earlier
        order("s-best", Side.SELL, P - CENT, created_ms=NOW + 3),
        order("s-far", Side.SELL, P + 5 * CENT),
    ]:
        assert e.submit(o, now_ms=NOW).order.status is OrderStatus.OPEN
    assert e.best_ask() == P - CENT
    taker = order("b", Side.BUY, P, 250_000, created_ms=NOW + 4)
    execution = e.submit(taker, now_ms=NOW + 4)
    # Better price first, then the earlier signed timestamp; each fill at the maker's price.
    assert [(f.maker_id, f.price, f.quantity, f.maker_remaining) for f in execution.fills] == [
        ("s-best", P - CENT, Q, 0),
        ("s-early", P, Q, 0),
        ("s-late", P, 50_000, 50_000),
    ]
    assert [f.quote_amount for f in execution.fills] == [59_999_990, 60_000_000, 30_000_000]
    assert all(f.taker_id == "b" and f.taker_side is Side.BUY for f in execution.fills)
    assert taker.status is OrderStatus.FILLED
    assert taker.filled == 250_000
    assert taker.remaining == 0
    assert book_of(e) == [("s-late", 50_000), ("s-far", Q)]
    # A buy above what is left: fills what crosses, the remainder rests as the best bid.
    rest = e.submit(order("b2", Side.BUY, P + CENT, 80_000), now_ms=NOW + 5)
    assert [(f.maker_id, f.quantity) for f in rest.fills] == [("s-late", 50_000)]
    assert rest.order.status is OrderStatus.OPEN
    assert rest.order.remaining == 30_000
    assert e.best_bid() == P + CENT
    assert e.best_ask() == P + 5 * CENT
    assert e.snapshot().bids == [LevelDepth(P + CENT, 30_000, 1)]


def test_equal_timestamps_are_ordered_by_id() -> None:
    e = engine()
    e.submit(order("bb", Side.SELL), now_ms=NOW)
    e.submit(order("aa", Side.SELL), now_ms=NOW)
    e.submit(order("cc", Side.SELL), now_ms=NOW)
    fills = e.submit(order("t", Side.BUY, P, 3 * Q), now_ms=NOW).fills
    assert [f.maker_id for f in fills] == ["aa", "bb", "cc"]


def test_quote_amount_rounds_down_once_per_fill() -> None:
    # 1 satoshi at 60,000.01 USDT is 600.0001 micro-USDT: the buyer pays 600, keeps the 0.0001.
    assert quote_amount(1, P + CENT, 8) == 600
    assert quote_amount(Q, P, 8) == 60 * USDT
    assert quote_amount(0, P, 8) == 0
    with pytest.raises(ValueError, match="non-negative"):
        quote_amount(-1, P, 8)
    e = engine()
    e.submit(order("s", Side.SELL, P + CENT, 10_000), now_ms=NOW)
    e.submit(order("s2", Side.SELL, P + CENT, 10_000), now_ms=NOW)
    fills = e.submit(order("b", Side.BUY, P + CENT, 20_000), now_ms=NOW).fills
    # Per fill: 10,000 sat at 60,000.01 = 6,000,001 micro-USDT exactly; two fills, same figure each.
    assert [f.quote_amount for f in fills] == [6_000_001, 6_000_001]


@dataclass(frozen=True)
class Rules:
    base_decimals: int = 8
    tick: int = 10
    lot: int = 1_000
    min_quantity: int = 10_000
    max_quantity: int = 10**12
    max_price: int = 10**15


def test_the_pairs_rules_are_checked_with_narrow_errors_and_nothing_changes() -> None:
    e = engine()
    e.submit(order("resting", Side.SELL, P + CENT), now_ms=NOW)
    before = book_of(e)
    bad = [
        (order("x1", Side.BUY, P + 1), InvalidPrice),  # off tick
        (order("x2", Side.BUY, 0), InvalidPrice),
        (order("x3", Side.BUY, -CENT), InvalidPrice),
        (order("x4", Side.BUY, 90 * USDT), InvalidPrice),  # 1 sat at 90 USDT/BTC is worth 0.9 micro-USDT
        (order("x5", Side.BUY, 10**20), InvalidPrice),  # above max_price
        (order("x6", Side.BUY, P, 9_999), InvalidQuantity),  # below min_quantity
        (order("x7", Side.BUY, P, 0), InvalidQuantity),
        (order("x8", Side.BUY, P, 22 * 10**14), InvalidQuantity),  # above max_quantity
        (order("x9", Side.BUY, P, Q, min_fill=Q + 1), InvalidQuantity),
        (order("x10", Side.BUY, P, Q, min_fill=-1), InvalidQuantity),
        (order("x11", Side.BUY, P, Q, expires_at_ms=NOW), OrderExpired),
        (order("resting", Side.BUY, P), DuplicateOrder),
    ]
    for o, error in bad:
        with pytest.raises(error):
            e.submit(o, now_ms=NOW)
        assert o.status is OrderStatus.NEW
        assert book_of(e) == before
    float_price = order("x12", Side.BUY, P)
    float_price.price = float(P)  # type: ignore[assignment]
    with pytest.raises(InvalidPrice):
        e.submit(float_price, now_ms=NOW)
    bool_quantity = order("x13", Side.BUY, P)
    bool_quantity.quantity = True
    with pytest.raises(InvalidQuantity):
        e.submit(bool_quantity, now_ms=NOW)
    inconsistent = order("x14", Side.BUY, P)
    inconsistent.filled = 5
    with pytest.raises(InvalidOrder, match="filled \\+ cancelled \\+ remaining"):
        e.submit(inconsistent, now_ms=NOW)
    done = order("x15", Side.BUY, P)
    done.status = OrderStatus.CANCELLED
    with pytest.raises(InvalidOrder, match="not new"):
        e.submit(done, now_ms=NOW)
    assert book_of(e) == before
    # Errors are the house's input errors.
    assert issubclass(InvalidOrder, InvalidInput)
    assert issubclass(UnknownOrder, NotFound)
    assert issubclass(InvalidReduction, IllegalTransition)
    # A lot and tick of their own: quantities and minimum fills are multiples of the lot.
    lots = MatchingEngine(Rules())
    assert min_price(Rules()) == 100_000  # 1,000 units at 100,000 per 10^8 is worth 1
    with pytest.raises(InvalidQuantity):
        lots.submit(order("l1", Side.BUY, P, 10_500), now_ms=NOW)
    with pytest.raises(InvalidQuantity):
        lots.submit(order("l2", Side.BUY, P, 20_000, min_fill=1_500), now_ms=NOW)
    with pytest.raises(InvalidPrice):
        lots.submit(order("l3", Side.BUY, 99_990), now_ms=NOW)
    assert lots.submit(order("l4", Side.BUY, 100_000, 20_000, min_fill=2_000), now_ms=NOW).order.status is (
        OrderStatus.OPEN
    )
    with pytest.raises(ValueError, match="multiples of lot"):
        MatchingEngine(Rules(min_quantity=1_500))
    with pytest.raises(ValueError, match="no valid price"):
        MatchingEngine(Rules(max_price=10))


def test_ioc_trades_what_it_can_and_never_rests() -> None:
    e = engine()
    e.submit(order("s", Side.SELL, P, Q), now_ms=NOW)
    ioc = e.submit(order("b", Side.BUY, P, 3 * Q, tif=TimeInForce.IOC), now_ms=NOW)
    assert [f.quantity for f in ioc.fills] == [Q]
    assert ioc.order.status is OrderStatus.CANCELLED
    assert ioc.reason is Reason.IOC_REMAINDER
    assert (ioc.order.filled, ioc.order.cancelled, ioc.order.remaining) == (Q, 2 * Q, 0)
    nothing = e.submit(order("b2", Side.BUY, P, Q, tif=TimeInForce.IOC), now_ms=NOW)
    assert not nothing.fills
    assert nothing.order.status is OrderStatus.CANCELLED
    assert len(e) == 0


def test_fok_fills_completely_or_changes_nothing() -> None:
    e = engine()
    e.submit(order("s1", Side.SELL, P, Q), now_ms=NOW)
    e.submit(order("s2", Side.SELL, P + CENT, Q), now_ms=NOW)
    e.submit(order("mine", Side.SELL, P, Q, owner="me"), now_ms=NOW)
    before = book_of(e)
    too_big = e.submit(order("f1", Side.BUY, P + CENT, 3 * Q, owner="me", tif=TimeInForce.FOK), now_ms=NOW)
    # Not even the self-trade cancel of "mine" happened.
    assert too_big.order.status is OrderStatus.REJECTED
    assert too_big.reason is Reason.FOK_NOT_FILLABLE
    assert not too_big.fills
    assert not too_big.self_trade_cancelled
    assert book_of(e) == before
    assert too_big.order.cancelled == 3 * Q
    fits = e.submit(order("f2", Side.BUY, P + CENT, 2 * Q, tif=TimeInForce.FOK), now_ms=NOW)
    assert fits.order.status is OrderStatus.FILLED
    assert sum(f.quantity for f in fits.fills) == 2 * Q


def test_post_only_never_takes() -> None:
    e = engine()
    e.submit(order("s", Side.SELL, P, Q), now_ms=NOW)
    crossing = e.submit(order("p1", Side.BUY, P, Q, tif=TimeInForce.POST_ONLY), now_ms=NOW)
    assert crossing.order.status is OrderStatus.REJECTED
    assert crossing.reason is Reason.POST_ONLY_WOULD_TAKE
    assert not crossing.fills
    assert book_of(e) == [("s", Q)]
    assert e.plan_take(order("p1", Side.BUY, P, Q, tif=TimeInForce.POST_ONLY), now_ms=NOW).blocked
    maker = e.submit(order("p2", Side.BUY, P - CENT, Q, tif=TimeInForce.POST_ONLY), now_ms=NOW)
    assert maker.order.status is OrderStatus.OPEN
    assert e.best_bid() == P - CENT


def test_taker_min_fill_skips_small_makers_and_never_rests_crossed() -> None:
    e = engine()
    e.submit(order("small", Side.SELL, P, 20_000), now_ms=NOW)
    e.submit(order("big", Side.SELL, P + CENT, 200_000), now_ms=NOW)
    # GTC buy of 0.003 BTC with a 0.0005 BTC minimum fill: skips "small", takes "big".
    execution = e.submit(order("b", Side.BUY, P + CENT, 300_000, min_fill=50_000), now_ms=NOW)
    assert [(f.maker_id, f.quantity) for f in execution.fills] == [("big", 200_000)]
    # 100,000 sat left would rest at a bid above "small"'s ask: cancelled instead.
    assert execution.order.status is OrderStatus.CANCELLED
    assert execution.reason is Reason.WOULD_REST_CROSSED
    assert execution.order.cancelled == 100_000
    assert book_of(e) == [("small", 20_000)]
    # Once what is left of it is below its own min_fill, it takes a fill of all of that.
    e = engine()
    e.submit(order("small", Side.SELL, P, 20_000), now_ms=NOW)
    e.submit(order("m50", Side.SELL, P, 50_000, created_ms=NOW + 1), now_ms=NOW)
    e.submit(order("s30", Side.SELL, P, 30_000, created_ms=NOW + 2), now_ms=NOW)
    tail = e.submit(order("b2", Side.BUY, P, 80_000, min_fill=50_000), now_ms=NOW)
    assert [(f.maker_id, f.quantity) for f in tail.fills] == [("m50", 50_000), ("s30", 30_000)]
    assert tail.order.status is OrderStatus.FILLED
    assert book_of(e) == [("small", 20_000)]


def test_maker_min_fill_is_respected_except_for_its_last_remainder() -> None:
    e = engine()
    maker = order("m", Side.SELL, P, 100_000, min_fill=40_000)
    e.submit(maker, now_ms=NOW)
    e.submit(order("other", Side.SELL, P + CENT, 100_000), now_ms=NOW)
    # 30,000 is below the maker's minimum: it is skipped for the next one, and the taker rests
    # nowhere (IOC).
    small = e.submit(order("t1", Side.BUY, P + CENT, 30_000, tif=TimeInForce.IOC), now_ms=NOW)
    assert [(f.maker_id, f.quantity) for f in small.fills] == [("other", 30_000)]
    assert maker.remaining == 100_000
    big = e.submit(order("t2", Side.BUY, P, 70_000), now_ms=NOW)
    assert [(f.maker_id, f.quantity) for f in big.fills] == [("m", 70_000)]
    # 30,000 left, below its min_fill of 40,000: a fill of all of it is allowed.
    last = e.submit(order("t3", Side.BUY, P, 30_000), now_ms=NOW)
    assert [(f.maker_id, f.quantity) for f in last.fills] == [("m", 30_000)]
    assert maker.status is OrderStatus.FILLED


def test_self_trade_prevention_cancel_resting() -> None:
    e = engine()
    e.submit(order("mine", Side.SELL, P, Q, owner="me"), now_ms=NOW)
    e.submit(order("theirs", Side.SELL, P, Q, owner="you", created_ms=NOW + 1), now_ms=NOW)
    execution = e.submit(order("b", Side.BUY, P, 2 * Q, owner="me", created_ms=NOW + 2), now_ms=NOW)
    assert [f.maker_id for f in execution.fills] == ["theirs"]
    assert [o.id for o in execution.self_trade_cancelled] == ["mine"]
    assert execution.self_trade_cancelled[0].status is OrderStatus.CANCELLED
    # Nothing crossing is left, so the remainder rests.
    assert book_of(e) == [("b", Q)]


def test_self_trade_prevention_cancel_taker() -> None:
    e = engine(SelfTradePrevention.CANCEL_TAKER)
    e.submit(order("theirs", Side.SELL, P - CENT, Q, owner="you"), now_ms=NOW)
    e.submit(order("mine", Side.SELL, P, Q, owner="me"), now_ms=NOW)
    e.submit(order("behind", Side.SELL, P, Q, owner="you", created_ms=NOW + 1), now_ms=NOW)
    plan = e.plan_take(order("b", Side.BUY, P, 3 * Q, owner="me"), now_ms=NOW)
    assert plan.stopped_by_self_trade
    assert [o.id for o in plan.self_trades] == ["mine"]
    execution = e.submit(order("b", Side.BUY, P, 3 * Q, owner="me"), now_ms=NOW)
    assert [f.maker_id for f in execution.fills] == ["theirs"]
    assert execution.reason is Reason.SELF_TRADE
    assert execution.order.cancelled == 2 * Q
    assert not execution.self_trade_cancelled
    assert book_of(e) == [("mine", Q), ("behind", Q)]


def test_expired_orders_are_never_filled_and_leave_the_book() -> None:
    e = engine()
    e.submit(order("old", Side.SELL, P - CENT, Q, expires_at_ms=NOW + 1_000), now_ms=NOW)
    e.submit(order("fresh", Side.SELL, P, Q, expires_at_ms=NOW + 60_000), now_ms=NOW)
    plan = e.plan_take(order("b", Side.BUY, P, Q), now_ms=NOW + 1_000)
    assert [p.maker.id for p in plan.fills] == ["fresh"]
    assert "old" in e
    execution = e.submit(order("b", Side.BUY, P, Q), now_ms=NOW + 1_000)
    assert [o.id for o in execution.expired] == ["old"]
    assert [f.maker_id for f in execution.fills] == ["fresh"]
    assert execution.expired[0].status is OrderStatus.EXPIRED
    assert execution.expired[0].cancelled == Q


def test_expire_returns_what_it_removed_earliest_first_and_refresh_moves_expiry() -> None:
    e = engine()
    e.submit(order("a", Side.BUY, P, Q, expires_at_ms=NOW + 5_000), now_ms=NOW)
    e.submit(order("c", Side.BUY, P, Q, expires_at_ms=NOW + 3_000), now_ms=NOW)
    e.submit(order("d", Side.BUY, P, Q, expires_at_ms=NOW + 4_000), now_ms=NOW)
    e.refresh("a", NOW + 9_000)
    e.refresh("d", NOW + 2_000)
    assert [o.id for o in e.expire(NOW + 5_000)] == ["d", "c"]
    assert book_of(e) == [("a", Q)]
    assert e.expire(NOW + 8_999) == []
    assert [o.id for o in e.expire(NOW + 9_000)] == ["a"]
    assert len(e) == 0
    with pytest.raises(UnknownOrder):
        e.refresh("a", NOW + 20_000)


def test_the_expiry_index_and_the_levels_stay_small_under_churn() -> None:
    e = engine()
    e.submit(order("front", Side.SELL, P, Q, expires_at_ms=NOW + 10**9), now_ms=NOW)
    for i in range(20_000):
        e.submit(order(f"o{i}", Side.SELL, P, Q, created_ms=NOW + i, expires_at_ms=NOW + 10**9 + i), now_ms=NOW)
        e.cancel(f"o{i}")
    level = e._book.asks.levels[P]
    assert len(level.queue) <= 2 * level.count + 16
    # Stale entries of the 20,000 cancelled orders do not pile up: the index is rebuilt.
    assert sum(len(bucket) for bucket in e._buckets.values()) <= 4 * len(e) + 4096 + 1
    e.submit(order("back", Side.SELL, P, Q, created_ms=NOW + 10**6), now_ms=NOW)
    fills = e.submit(order("b", Side.BUY, P, 2 * Q), now_ms=NOW).fills
    assert [f.maker_id for f in fills] == ["front", "back"]
    assert len(e) == 0


def test_add_rests_without_matching_and_refuses_a_crossing_order() -> None:
    e = engine()
    e.submit(order("s", Side.SELL, P, Q), now_ms=NOW)
    foreign = order("f", Side.BUY, P, Q)
    with pytest.raises(WouldCross) as refused:
        e.add(foreign, now_ms=NOW)
    assert refused.value.crossed == ["s"]
    assert foreign.status is OrderStatus.NEW
    assert book_of(e) == [("s", Q)]
    # A partly filled foreign order (the owner says 30,000 are left) rests with that remainder,
    # ahead of a later order at its price.
    e.add(order("late", Side.BUY, P - CENT, Q, created_ms=NOW + 5), now_ms=NOW)
    partly = order("early", Side.BUY, P - CENT, Q, created_ms=NOW)
    partly.remaining, partly.filled = 30_000, 70_000
    e.add(partly, now_ms=NOW)
    assert book_of(e) == [("early", 30_000), ("late", Q), ("s", Q)]
    # Only an expired order in the way: it is retired and the new one rests.
    e.submit(order("gone", Side.SELL, P - 3 * CENT, Q, expires_at_ms=NOW + 10), now_ms=NOW)
    e.add(order("f2", Side.BUY, P - 2 * CENT, Q), now_ms=NOW + 10)
    assert "gone" not in e
    assert e.best_bid() == P - CENT
    broken = order("f3", Side.BUY, P - 5 * CENT, Q)
    broken.remaining = 50_000
    with pytest.raises(InvalidOrder):
        e.add(broken, now_ms=NOW)


def test_the_node_takes_through_plan_take_reduce_and_add() -> None:
    """The network's take: the node plans, each owner grants (maybe less), the node applies
    the owners' answers and rests the remainder."""
    e = engine()
    e.submit(order("m1", Side.SELL, P, Q), now_ms=NOW)
    e.submit(order("m2", Side.SELL, P + CENT, Q), now_ms=NOW)
    taker = order("t", Side.BUY, P + CENT, 3 * Q)
    before = book_of(e)
    plan = e.plan_take(taker, now_ms=NOW)
    assert [(p.maker.id, p.quantity, p.price) for p in plan.fills] == [("m1", Q, P), ("m2", Q, P + CENT)]
    assert plan.quantity == 2 * Q
    assert not plan.complete
    assert book_of(e) == before
    assert taker.status is OrderStatus.NEW
    assert taker.remaining == 3 * Q
    # m1's owner grants all, m2's owner only 40,000 (someone else took the rest first).
    assert e.reduce("m1", 0).status is OrderStatus.FILLED
    e.reduce("m2", Q - 40_000)
    assert e.reduce("m2", Q - 40_000).filled == 40_000  # the same answer twice changes nothing
    with pytest.raises(InvalidReduction):
        e.reduce("m2", Q)  # remaining never goes up
    with pytest.raises(UnknownOrder):
        e.reduce("m1", 0)
    # m2's owner then cancels what is left.
    assert e.cancel("m2").cancelled == Q - 40_000
    taker.remaining, taker.filled = 3 * Q - Q - 40_000, Q + 40_000
    e.add(taker, now_ms=NOW)
    assert book_of(e) == [("t", 160_000)]
    assert e.best_bid() == P + CENT
    with pytest.raises(UnknownOrder):
        e.cancel("m2")
    assert e.remove is not None
    assert e.get("t") is taker
    assert e.get("m1") is None


def test_depth_and_iteration() -> None:
    e = engine()
    for i, (side, price) in enumerate(
        [(Side.BUY, P - CENT), (Side.BUY, P - CENT), (Side.BUY, P - 3 * CENT), (Side.SELL, P), (Side.SELL, P + CENT)]
    ):
        e.submit(order(f"o{i}", side, price, Q * (i + 1), created_ms=NOW + i), now_ms=NOW)
    assert e.depth(Side.BUY) == [LevelDepth(P - CENT, 3 * Q, 2), LevelDepth(P - 3 * CENT, 3 * Q, 1)]
    assert e.depth(Side.SELL, 1) == [LevelDepth(P, 4 * Q, 1)]
    assert e.snapshot(1).bids == [LevelDepth(P - CENT, 3 * Q, 2)]
    assert [o.id for o in e] == ["o0", "o1", "o2", "o3", "o4"]
    assert len(e) == 5
    assert (e.best_bid(), e.best_ask()) == (P - CENT, P)
    empty = engine()
    assert (empty.best_bid(), empty.best_ask(), empty.snapshot().bids, list(empty)) == (None, None, [], [])
