"""Property tests of the payout planner (pure functions, seeded randomness)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mixhouse.errors import InvalidAmount
from mixhouse.mixer.planner import (
    Plan,
    denominate,
    fee_bounds,
    is_series_value,
    payout_quantum,
    plan_payouts,
    quoted_total_range,
    series_values,
)

SEEDS = st.integers(min_value=0, max_value=2**64 - 1)
COIN = 10**8


def _plan(
    pooled: int,
    addresses: tuple[str, ...],
    *,
    fee_min_bps: int = 100,
    fee_max_bps: int = 300,
    network_fee_per_payout: int = 0,
    min_payout: int = 1,
    delay: tuple[int, int] = (0, 60),
    seed: int = 0,
) -> Plan:
    return plan_payouts(
        pooled=pooled,
        fee_min_bps=fee_min_bps,
        fee_max_bps=fee_max_bps,
        withdrawal_addresses=addresses,
        network_fee_per_payout=network_fee_per_payout,
        min_payout=min_payout,
        delay_min_seconds=delay[0],
        delay_max_seconds=delay[1],
        rng=random.Random(seed),
    )


@st.composite
def addresses(draw: st.DrawFn) -> tuple[str, ...]:
    n = draw(st.integers(min_value=1, max_value=10))
    return tuple(f"w{i}" for i in draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n, unique=True)))


@settings(max_examples=400, deadline=None)
@given(
    pooled=st.integers(min_value=COIN, max_value=10**6 * COIN),
    addrs=addresses(),
    fee_min=st.integers(min_value=0, max_value=500),
    width=st.integers(min_value=10, max_value=500),
    network_fee=st.sampled_from([0, 0, 21_000, 10**6]),
    seed=SEEDS,
)
def test_plan_is_exact_in_series_and_inside_the_quoted_range(
    pooled: int, addrs: tuple[str, ...], fee_min: int, width: int, network_fee: int, seed: int
) -> None:
    fee_max = fee_min + width
    try:
        plan = _plan(
            pooled, addrs, fee_min_bps=fee_min, fee_max_bps=fee_max, network_fee_per_payout=network_fee, seed=seed
        )
    except InvalidAmount:
        # Only network fees can make a deposit of a coin or more too small for its pieces.
        assert network_fee > 0
        return
    # What the user receives is exactly what the status says: the sum, to the base unit.
    assert sum(p.amount for p in plan.payouts) == plan.payout_total == pooled - plan.fee - plan.network_fee
    low, high = fee_bounds(pooled, fee_min, fee_max)
    assert low <= plan.fee <= high, "the fee stays inside the quoted range"
    assert plan.network_fee == len(plan.payouts) * network_fee
    # Every piece is a value of the 1-2-5 series times the deposit's quantum.
    assert all(is_series_value(p.amount, plan.quantum) for p in plan.payouts)
    assert plan.payout_total % plan.quantum == 0
    # Every address is paid; each delay is inside the window.
    assert set(Counter(p.to_address for p in plan.payouts)) == set(addrs)
    assert all(0 <= p.delay_seconds <= 60 for p in plan.payouts)
    # The quoted range (before the deposit) contains what is paid.
    bottom, top = quoted_total_range(pooled, fee_min, fee_max, network_fee=plan.network_fee)
    assert bottom <= plan.payout_total <= top
    if len(addrs) > 1:
        # No address of a multi-address mix receives a total the deposit could pay alone
        # (it would pass for a single-address mix of this deposit).
        received = Counter[str]()
        for p in plan.payouts:
            received[p.to_address] += p.amount
        assert max(received.values()) < bottom


@given(pooled=st.integers(min_value=COIN, max_value=10**5 * COIN), seed=SEEDS)
def test_a_plan_is_reproducible_from_its_seed(pooled: int, seed: int) -> None:
    assert _plan(pooled, ("a", "b", "c"), seed=seed) == _plan(pooled, ("a", "b", "c"), seed=seed)


@pytest.mark.parametrize("pooled", [7_379_444_720, 3_089_582_890, 5_185_221_147, 10_300_000_000])
def test_no_address_of_a_two_address_mix_looks_like_the_whole_mix(pooled: int) -> None:
    # The deposits of the realistic population whose larger address the "single" attack linked
    # before the rule (one address got 72 of a 73.79 total), and a total of one big piece.
    bottom, _ = quoted_total_range(pooled, 100, 300)
    for seed in range(300):
        plan = _plan(pooled, ("a", "b"), seed=seed)
        received = Counter[str]()
        for p in plan.payouts:
            received[p.to_address] += p.amount
        assert max(received.values()) < bottom, seed


def test_totals_of_similar_deposits_share_a_coarse_grid() -> None:
    # 25 coins, range 1-3%: the quantum is 0.1 coin, so totals are one of 5 values.
    totals = {_plan(25 * COIN, ("a",), seed=s).payout_total for s in range(400)}
    assert payout_quantum(25 * COIN, 100, 300) == COIN // 10
    assert totals <= {24_300_000_00 - i * 10_000_000 for i in range(-4, 2)}
    assert len(totals) >= 4


@pytest.mark.parametrize(
    ("pooled", "expected"),
    [(150_000_000, 1_000_000), (25 * COIN, 10_000_000), (500 * COIN, 100_000_000), (100, 1), (0, 1)],
)
def test_quantum_is_the_power_of_ten_below_half_the_fee_range(pooled: int, expected: int) -> None:
    assert payout_quantum(pooled, 100, 300) == expected


def test_quantum_respects_the_dust_limit() -> None:
    assert payout_quantum(10**5, 100, 300, minimum=546) == 1_000


@given(
    units=st.integers(min_value=1, max_value=10**7),
    quantum=st.sampled_from([1, 10, 1000, 10**6]),
    min_pieces=st.integers(min_value=1, max_value=10),
    seed=SEEDS,
)
def test_denominate_sums_exactly_into_series_pieces(units: int, quantum: int, min_pieces: int, seed: int) -> None:
    total = units * quantum
    pieces = denominate(total, quantum, min_pieces=min_pieces, max_pieces=80, rng=random.Random(seed))
    assert sum(pieces) == total
    assert all(is_series_value(p, quantum) for p in pieces)
    assert len(pieces) <= 80
    if units >= min_pieces:
        assert len(pieces) >= min_pieces or len(pieces) == 80


def test_denominate_refuses_a_total_off_the_grid() -> None:
    with pytest.raises(InvalidAmount):
        denominate(15, 10, min_pieces=1, max_pieces=8, rng=random.Random(0))
    with pytest.raises(InvalidAmount):
        denominate(0, 10, min_pieces=1, max_pieces=8, rng=random.Random(0))


def test_series_values() -> None:
    assert series_values(120, 1) == [100, 50, 20, 10, 5, 2, 1]
    assert [is_series_value(v, 10) for v in (10, 20, 50, 100, 30, 15, 5, 0)] == [True] * 4 + [False] * 4


def test_too_small_a_deposit_is_refused() -> None:
    with pytest.raises(InvalidAmount):
        _plan(3, ("a", "b", "c"), min_payout=1)
    with pytest.raises(InvalidAmount):
        _plan(COIN, ("a", "b"), network_fee_per_payout=COIN // 2)


def test_no_addresses_or_an_empty_window_is_refused() -> None:
    with pytest.raises(InvalidAmount):
        _plan(COIN, ())
    with pytest.raises(InvalidAmount):
        _plan(COIN, ("a",), delay=(10, 5))


@given(pooled=st.integers(min_value=0, max_value=10**20), a=st.integers(0, 5000), b=st.integers(0, 5000))
def test_fee_bounds_are_ordered_and_rounded_inwards(pooled: int, a: int, b: int) -> None:
    low_bps, high_bps = sorted((a, b))
    low, high = fee_bounds(pooled, low_bps, high_bps)
    assume(high_bps > low_bps)
    assert low * 10_000 >= pooled * low_bps
    assert low <= high
    assert high * 10_000 <= max(pooled * high_bps, low * 10_000)
