"""Coin selection: properties (hypothesis) and worked examples."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mixhouse.chains.bitcoin.coinselect import (
    P2WPKH_INPUT_VBYTES,
    P2WPKH_OUTPUT_VBYTES,
    TX_OVERHEAD_VBYTES,
    Coin,
    FeeTooHigh,
    Selection,
    dust_threshold,
    estimate_vsize,
    output_vbytes,
    select_coins,
)
from mixhouse.errors import InsufficientFunds, InvalidAmount

OWNERS = ["mix-a", "mix-b", "mix-c", None]
NO_LIMIT = 10**15


@st.composite
def coin_sets(draw: st.DrawFn, max_size: int = 12) -> list[Coin]:
    amounts = draw(st.lists(st.integers(1, 5_000_000), min_size=0, max_size=max_size))
    owners = draw(st.lists(st.sampled_from(OWNERS), min_size=len(amounts), max_size=len(amounts)))
    return [
        Coin(txid=f"{i:064x}", vout=i % 3, amount=a, address=f"bcrt1q{i}", owner=o)
        for i, (a, o) in enumerate(zip(amounts, owners, strict=True))
    ]


def _eligible(coins: list[Coin], exclude: str | None) -> list[Coin]:
    return [c for c in coins if exclude is None or c.owner != exclude]


def _covers(n_inputs: int, total: int, targets: int, fee_rate: int, n_outputs: int) -> bool:
    return total >= targets + estimate_vsize(n_inputs, P2WPKH_OUTPUT_VBYTES * n_outputs) * fee_rate


def _min_inputs_needed(coins: list[Coin], targets: int, fee_rate: int, n_outputs: int) -> int | None:
    """Brute force: the fewest coins that cover, or None."""
    for k in range(1, len(coins) + 1):
        for combo in itertools.combinations(coins, k):
            if _covers(k, sum(c.amount for c in combo), targets, fee_rate, n_outputs):
                return k
    return None


def _check_invariants(sel: Selection, *, targets: int, fee_rate: int, dust: int, n_outputs: int) -> None:
    assert sel.total_in == targets + sel.fee + sel.change
    assert sel.change == 0 or sel.change >= dust
    n_out = n_outputs + (1 if sel.change else 0)
    vsize = estimate_vsize(len(sel.inputs), P2WPKH_OUTPUT_VBYTES * n_out)
    assert sel.vsize == vsize
    assert sel.fee >= vsize * fee_rate
    if sel.change == 0:
        # No change: at most a would-be change output's dust plus its own cost went to the fee.
        assert sel.fee - vsize * fee_rate < dust + P2WPKH_OUTPUT_VBYTES * fee_rate or dust == 0
    else:
        assert sel.fee == vsize * fee_rate
    assert len({(c.txid, c.vout) for c in sel.inputs}) == len(sel.inputs)


@settings(max_examples=300, deadline=None)
@given(
    coins=coin_sets(),
    targets=st.integers(1, 8_000_000),
    fee_rate=st.integers(1, 60),
    exclude=st.sampled_from(OWNERS),
    n_outputs=st.integers(1, 4),
    dust=st.sampled_from([0, 294, 546, 1_000]),
    seed=st.integers(0, 2**32),
)
def test_selection_properties(
    coins: list[Coin],
    targets: int,
    fee_rate: int,
    exclude: str | None,
    n_outputs: int,
    dust: int,
    seed: int,
) -> None:
    eligible = _eligible(coins, exclude)
    needed = _min_inputs_needed(eligible, targets, fee_rate, n_outputs)
    try:
        sel = select_coins(
            coins=coins,
            targets=targets,
            fee_rate=fee_rate,
            exclude_owner=exclude,
            n_outputs=n_outputs,
            dust=dust,
            max_fee=NO_LIMIT,
            rng=random.Random(seed),
        )
    except InsufficientFunds:
        # Raised exactly when no subset of the eligible coins covers.
        assert needed is None
        return
    assert needed is not None
    # Never the excluded owner's coins, only coins we were given.
    assert all(exclude is None or c.owner != exclude for c in sel.inputs)
    assert set(sel.inputs) <= set(coins)
    _check_invariants(sel, targets=targets, fee_rate=fee_rate, dust=dust, n_outputs=n_outputs)
    # The fewest inputs possible (one coin whenever one suffices).
    assert len(sel.inputs) == needed


@settings(max_examples=200, deadline=None)
@given(coins=coin_sets(), targets=st.integers(1, 3_000_000), fee_rate=st.integers(1, 30), seed=st.integers(0, 999))
def test_prefers_a_single_coin(coins: list[Coin], targets: int, fee_rate: int, seed: int) -> None:
    fee_one = estimate_vsize(1, P2WPKH_OUTPUT_VBYTES) * fee_rate
    covering = [c for c in coins if c.amount >= targets + fee_one]
    assume(covering)
    sel = select_coins(
        coins=coins,
        targets=targets,
        fee_rate=fee_rate,
        exclude_owner=None,
        n_outputs=1,
        max_fee=NO_LIMIT,
        rng=random.Random(seed),
    )
    assert len(sel.inputs) == 1
    # ... and the smallest coin that covers.
    assert sel.inputs[0].amount == min(c.amount for c in covering)


@settings(max_examples=200, deadline=None)
@given(coins=coin_sets(), targets=st.integers(1, 8_000_000), fee_rate=st.integers(1, 30), seed=st.integers(0, 999))
def test_insufficient_when_eligible_total_is_short(coins: list[Coin], targets: int, fee_rate: int, seed: int) -> None:
    eligible = _eligible(coins, "mix-a")
    # Even a one-input transaction's fee is more than the eligible coins leave over.
    assume(sum(c.amount for c in eligible) < targets + estimate_vsize(1, P2WPKH_OUTPUT_VBYTES) * fee_rate)
    with pytest.raises(InsufficientFunds):
        select_coins(
            coins=coins,
            targets=targets,
            fee_rate=fee_rate,
            exclude_owner="mix-a",
            n_outputs=1,
            max_fee=NO_LIMIT,
            rng=random.Random(seed),
        )


@given(seed=st.integers(0, 2**32))
def test_deterministic_for_a_seed(seed: int) -> None:
    coins = [Coin(f"{i:064x}", 0, 100_000, f"a{i}", None) for i in range(6)]

    def run() -> Selection:
        return select_coins(
            coins=coins,
            targets=150_000,
            fee_rate=5,
            exclude_owner=None,
            n_outputs=2,
            max_fee=NO_LIMIT,
            rng=random.Random(seed),
        )

    first, again = run(), run()
    assert first == again


def _coin(name: str, amount: int, owner: str | None = None) -> Coin:
    return Coin(txid=name * 64 if len(name) == 1 else name, vout=0, amount=amount, address="x", owner=owner)


def test_excluded_deposit_is_never_spent_even_if_it_is_the_only_fit() -> None:
    own = _coin("a", 10_000_000, owner="mix-1")
    others = [_coin("b", 60_000, owner="mix-2"), _coin("c", 50_000)]
    sel = select_coins(
        coins=[own, *others],
        targets=100_000,
        fee_rate=2,
        exclude_owner="mix-1",
        n_outputs=1,
        max_fee=NO_LIMIT,
        rng=random.Random(1),
    )
    assert own not in sel.inputs
    assert set(sel.inputs) == set(others)
    with pytest.raises(InsufficientFunds):
        select_coins(
            coins=[own],
            targets=100_000,
            fee_rate=2,
            exclude_owner="mix-1",
            n_outputs=1,
            max_fee=NO_LIMIT,
            rng=random.Random(1),
        )


def test_worked_example_with_change() -> None:
    # 1 input, 2 payment outputs + change: 11 + 68 + 3 * 31 = 172 vB at 10 sat/vB = 1720 sat.
    sel = select_coins(
        coins=[_coin("a", 1_000_000)],
        targets=500_000,
        fee_rate=10,
        exclude_owner=None,
        n_outputs=2,
        max_fee=NO_LIMIT,
        rng=random.Random(0),
    )
    assert sel.vsize == TX_OVERHEAD_VBYTES + P2WPKH_INPUT_VBYTES + 3 * P2WPKH_OUTPUT_VBYTES == 172
    assert sel.fee == 1_720
    assert sel.change == 1_000_000 - 500_000 - 1_720


def test_sub_dust_change_goes_to_the_fee() -> None:
    # Without change: 11 + 68 + 31 = 110 vB = 110 sat at 1 sat/vB. 600 sat over that would be
    # change of 600 - 31 = 569 sat with a change output: above 546, kept.
    sel = select_coins(
        coins=[_coin("a", 100_000 + 110 + 600)],
        targets=100_000,
        fee_rate=1,
        exclude_owner=None,
        n_outputs=1,
        max_fee=NO_LIMIT,
        rng=random.Random(0),
    )
    assert (sel.change, sel.fee) == (569, 141)
    # 560 over: the change would be 529 < 546, so no change output and a 670 sat fee.
    sel = select_coins(
        coins=[_coin("a", 100_000 + 110 + 560)],
        targets=100_000,
        fee_rate=1,
        exclude_owner=None,
        n_outputs=1,
        max_fee=NO_LIMIT,
        rng=random.Random(0),
    )
    assert (sel.change, sel.fee, sel.vsize) == (0, 670, 110)


def test_fewest_coins_then_smallest_tail() -> None:
    coins = [_coin("a", 70_000), _coin("b", 60_000), _coin("c", 45_000), _coin("d", 41_000)]
    sel = select_coins(
        coins=coins,
        targets=110_000,
        fee_rate=1,
        exclude_owner=None,
        n_outputs=1,
        max_fee=NO_LIMIT,
        rng=random.Random(0),
    )
    # Two coins are needed; 70k is the largest, and 41k is the smallest partner that covers
    # 110k + (11 + 2*68 + 31) sat.
    assert [c.amount for c in sel.inputs] == [70_000, 41_000]


def test_fee_above_max_fee() -> None:
    with pytest.raises(FeeTooHigh):
        select_coins(
            coins=[_coin("a", 1_000_000)],
            targets=100_000,
            fee_rate=50,
            exclude_owner=None,
            n_outputs=1,
            max_fee=5_000,
            rng=random.Random(0),
        )
    assert issubclass(FeeTooHigh, InvalidAmount)


def test_uneconomic_coins_are_skipped() -> None:
    # At 10 sat/vB an input costs 680 sat: a 600 sat coin would lower the total.
    sel = select_coins(
        coins=[_coin("a", 600), _coin("b", 200_000)],
        targets=100_000,
        fee_rate=10,
        exclude_owner=None,
        n_outputs=1,
        max_fee=NO_LIMIT,
        rng=random.Random(0),
    )
    assert [c.amount for c in sel.inputs] == [200_000]


def test_custom_output_sizes() -> None:
    # Paying one P2TR output (43 vB) instead of P2WPKH (31 vB).
    p2tr = output_vbytes(b"\x51\x20" + bytes(32))
    assert p2tr == 43
    sel = select_coins(
        coins=[_coin("a", 1_000_000)],
        targets=100_000,
        fee_rate=1,
        exclude_owner=None,
        n_outputs=1,
        outputs_vbytes=p2tr,
        max_fee=NO_LIMIT,
        rng=random.Random(0),
    )
    assert sel.vsize == 11 + 68 + 43 + 31


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"targets": 0}, InvalidAmount),
        ({"fee_rate": 0}, InvalidAmount),
        ({"n_outputs": 0}, InvalidAmount),
        ({"max_fee": -1}, InvalidAmount),
    ],
)
def test_invalid_arguments(kwargs: dict[str, int], error: type[Exception]) -> None:
    base: dict[str, int] = {"targets": 1_000, "fee_rate": 1, "n_outputs": 1, "max_fee": 1_000}
    base.update(kwargs)
    with pytest.raises(error):
        select_coins(coins=[_coin("a", 10_000)], exclude_owner=None, rng=random.Random(0), **base)


def test_dust_thresholds_match_bitcoin_core() -> None:
    assert dust_threshold(b"\x00\x14" + bytes(20)) == 294  # P2WPKH
    assert dust_threshold(b"\x00\x20" + bytes(32)) == 330  # P2WSH
    assert dust_threshold(b"\x51\x20" + bytes(32)) == 330  # P2TR
    assert dust_threshold(b"\xa9\x14" + bytes(20) + b"\x87") == 540  # P2SH
    assert dust_threshold(b"\x76\xa9\x14" + bytes(20) + b"\x88\xac") == 546  # P2PKH
    assert dust_threshold(b"\x6a\x04test") == 0  # OP_RETURN
