"""Property tests of the payout planner (pure functions, seeded randomness)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mixhouse.errors import InvalidAmount
from mixhouse.mixer.planner import Plan, draw_fee_bps, plan_payouts, split_amount

SEEDS = st.integers(min_value=0, max_value=2**64 - 1)


@dataclass(frozen=True)
class Case:
    deposit: int
    fee_bps: int
    addresses: tuple[str, ...]
    network_fee_per_payout: int
    min_payout: int
    delay_min: int
    delay_max: int
    seed: int

    def plan(self) -> Plan:
        return plan_payouts(
            deposit=self.deposit,
            fee_bps=self.fee_bps,
            withdrawal_addresses=self.addresses,
            network_fee_per_payout=self.network_fee_per_payout,
            min_payout=self.min_payout,
            delay_min_seconds=self.delay_min,
            delay_max_seconds=self.delay_max,
            rng=random.Random(self.seed),
        )

    @property
    def fee(self) -> int:
        return self.deposit * self.fee_bps // 10_000

    @property
    def coverable(self) -> bool:
        """Whether one payout per address fits (the planner's documented precondition)."""
        n = len(self.addresses)
        return self.deposit - self.fee - n * self.network_fee_per_payout >= n * max(self.min_payout, 1)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    n = draw(st.integers(min_value=1, max_value=10))
    addresses = tuple(
        f"0x{i:040x}" for i in draw(st.lists(st.integers(0, 2**160 - 1), min_size=n, max_size=n, unique=True))
    )
    delay_min = draw(st.integers(min_value=0, max_value=86_400))
    delay_max = draw(st.integers(min_value=delay_min, max_value=delay_min + 7 * 86_400))
    return Case(
        deposit=draw(st.integers(min_value=1, max_value=10**24)),
        fee_bps=draw(st.integers(min_value=0, max_value=5_000)),
        addresses=addresses,
        network_fee_per_payout=draw(st.integers(min_value=0, max_value=10**15)),
        min_payout=draw(st.one_of(st.just(0), st.just(10_000), st.just(10**12), st.integers(0, 10**16))),
        delay_min=delay_min,
        delay_max=delay_max,
        seed=draw(SEEDS),
    )


@settings(max_examples=300)
@given(cases())
def test_plan_invariants(case: Case) -> None:
    assume(case.coverable)
    plan = case.plan()
    n = len(case.addresses)
    count = len(plan.payouts)

    assert plan.fee == case.deposit * case.fee_bps // 10_000
    assert n <= count <= 2 * n
    assert plan.network_fee == count * case.network_fee_per_payout
    total = sum(p.amount for p in plan.payouts)
    assert total == case.deposit - plan.fee - plan.network_fee
    assert plan.payout_total == total
    for payout in plan.payouts:
        assert payout.amount >= case.min_payout
        assert payout.amount >= 1
        assert case.delay_min <= payout.delay_seconds <= case.delay_max
        assert payout.to_address in case.addresses
    assert set(Counter(p.to_address for p in plan.payouts)) == set(case.addresses)


@given(cases())
def test_plan_is_reproducible(case: Case) -> None:
    assume(case.coverable)
    assert case.plan() == case.plan()


@given(cases())
def test_plan_rejects_uncoverable_deposit(case: Case) -> None:
    assume(not case.coverable)
    with pytest.raises(InvalidAmount):
        case.plan()


@given(st.integers(min_value=1, max_value=10), SEEDS)
def test_plan_exact_minimum_is_accepted(n: int, seed: int) -> None:
    """A deposit that covers exactly n minimum payouts and their fees plans n payouts."""
    min_payout, net = 10**12, 21_000 * 10**9
    deposit = n * (min_payout + net)
    addresses = [f"addr-{i}" for i in range(n)]
    plan = plan_payouts(
        deposit=deposit,
        fee_bps=0,
        withdrawal_addresses=addresses,
        network_fee_per_payout=net,
        min_payout=min_payout,
        delay_min_seconds=0,
        delay_max_seconds=0,
        rng=random.Random(seed),
    )
    assert sorted(p.to_address for p in plan.payouts) == sorted(addresses)
    assert all(p.amount == min_payout and p.delay_seconds == 0 for p in plan.payouts)
    with pytest.raises(InvalidAmount):
        plan_payouts(
            deposit=deposit - 1,
            fee_bps=0,
            withdrawal_addresses=addresses,
            network_fee_per_payout=net,
            min_payout=min_payout,
            delay_min_seconds=0,
            delay_max_seconds=0,
            rng=random.Random(seed),
        )


@pytest.mark.parametrize(
    ("addresses", "delay_min", "delay_max"),
    [([], 0, 10), (["a"], 10, 9), (["a"], -1, 9)],
)
def test_plan_rejects_bad_arguments(addresses: list[str], delay_min: int, delay_max: int) -> None:
    with pytest.raises(InvalidAmount):
        plan_payouts(
            deposit=10**18,
            fee_bps=100,
            withdrawal_addresses=addresses,
            network_fee_per_payout=0,
            min_payout=1,
            delay_min_seconds=delay_min,
            delay_max_seconds=delay_max,
            rng=random.Random(1),
        )


def test_different_seeds_vary_the_plan() -> None:
    """The randomness is actually used: many seeds give many different plans."""
    plans = {
        plan_payouts(
            deposit=10**20,
            fee_bps=150,
            withdrawal_addresses=["a", "b", "c"],
            network_fee_per_payout=10**14,
            min_payout=10**12,
            delay_min_seconds=60,
            delay_max_seconds=3_600,
            rng=random.Random(seed),
        )
        for seed in range(50)
    }
    assert len(plans) > 40
    counts = {len(p.payouts) for p in plans}
    assert counts > {3}
    assert counts <= {3, 4, 5, 6}


@given(
    st.integers(min_value=1, max_value=20),
    st.integers(min_value=0, max_value=10**16),
    st.integers(min_value=0, max_value=10**24),
    SEEDS,
)
def test_split_amount_sums_and_bounds(parts: int, minimum: int, spare: int, seed: int) -> None:
    total = parts * minimum + spare
    shares = split_amount(total, parts, minimum, random.Random(seed))
    assert len(shares) == parts
    assert sum(shares) == total
    assert all(s >= minimum for s in shares)
    assert split_amount(total, parts, minimum, random.Random(seed)) == shares


@given(st.integers(min_value=1, max_value=20), st.integers(min_value=1, max_value=10**16), SEEDS)
def test_split_amount_rejects_short_total(parts: int, minimum: int, seed: int) -> None:
    with pytest.raises(InvalidAmount):
        split_amount(parts * minimum - 1, parts, minimum, random.Random(seed))


def test_split_amount_rejects_no_parts() -> None:
    with pytest.raises(InvalidAmount):
        split_amount(100, 0, 1, random.Random(0))


@given(st.integers(min_value=0, max_value=5_000), st.integers(min_value=0, max_value=5_000), SEEDS)
def test_draw_fee_bps_within_range(a: int, b: int, seed: int) -> None:
    low, high = min(a, b), max(a, b)
    rng = random.Random(seed)
    for _ in range(20):
        assert low <= draw_fee_bps(low, high, rng) <= high


def test_draw_fee_bps_covers_range() -> None:
    rng = random.Random(7)
    seen = {draw_fee_bps(50, 54, rng) for _ in range(500)}
    assert seen == {50, 51, 52, 53, 54}
