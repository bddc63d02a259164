"""The UTXO batch planner (which payouts share a transaction, who pays what of its fee) and
the batch transaction itself: exact outputs, change, dust, fee, random output order."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from embit.transaction import Transaction  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from mixhouse.chains.base import PoolCoin
from mixhouse.chains.bitcoin.coinselect import P2WPKH_OUTPUT_VBYTES
from mixhouse.chains.bitcoin.networks import address_of_script
from mixhouse.chains.bitcoin.pool_spend import build_pool_spend
from mixhouse.errors import InvalidAmount
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.keys.signer import SoftwareSigner
from mixhouse.mixer.batch_plan import BatchCandidate, batch_fee_cap, choose_batch, split_fee

MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
KEYRING = Bip84Keyring(MNEMONIC, "regtest")
# Recipients and pool coins derived once: key derivation is not what these tests are about.
RECIPIENTS = [KEYRING.address(0, 500 + i) for i in range(12)]
COINS = [
    PoolCoin(hashlib.sha256(f"c{n}".encode()).hexdigest(), n % 2, amount, KEYRING.address(1, n), 1, n, owner)
    for n, (amount, owner) in enumerate(
        [(30_000_000, None), (20_000_000, "mix-0"), (12_000_000, None), (5_000_000, "mix-1"), (3_000_000, None)]
    )
]


def _candidate(i: int, address: str, amount: int, mix: str = "m") -> BatchCandidate:
    return BatchCandidate(send_id=i, mix_id=mix, to_address=address, amount=amount, fee_reserved=1_410)


candidates = st.lists(
    st.tuples(st.integers(0, 5), st.integers(1, 10**7), st.integers(0, 3)), min_size=0, max_size=30
).map(lambda xs: [_candidate(i, f"addr{a}", amount, f"mix{m}") for i, (a, amount, m) in enumerate(xs)])


@given(candidates, st.integers(1, 8), st.integers(0, 1_000))
def test_a_batch_has_one_output_per_address_no_dust_and_loses_nobody(
    cands: list[BatchCandidate], max_outputs: int, dust: int
) -> None:
    choice = choose_batch(cands, max_outputs=max_outputs, dust=dust)
    assert len(choice.taken) <= max_outputs
    assert len({c.to_address for c in choice.taken}) == len(choice.taken)
    assert all(c.amount >= dust for c in choice.taken)
    assert all(c.amount < dust for c in choice.unbatchable)
    everyone = [*choice.taken, *choice.waiting, *choice.unbatchable]
    assert sorted(c.send_id for c in everyone) == [c.send_id for c in cands]
    # Due order: the earliest payout of each address is the one taken.
    taken_ids = {c.send_id for c in choice.taken}
    for c in choice.waiting:
        if c.to_address in {t.to_address for t in choice.taken}:
            first = next(t for t in choice.taken if t.to_address == c.to_address)
            assert first.send_id < c.send_id
    assert choice.mix_ids == {c.mix_id for c in cands if c.send_id in taken_ids}


def test_the_second_piece_of_an_address_waits_for_the_next_batch() -> None:
    cands = [_candidate(1, "a", 5_000), _candidate(2, "a", 2_000), _candidate(3, "b", 1_000), _candidate(4, "c", 100)]
    choice = choose_batch(cands, max_outputs=10, dust=546)
    assert [c.send_id for c in choice.taken] == [1, 3]
    assert [c.send_id for c in choice.waiting] == [2]
    assert [c.send_id for c in choice.unbatchable] == [4]
    with pytest.raises(InvalidAmount):
        choose_batch(cands, max_outputs=0, dust=546)


@given(st.integers(0, 10**9), st.lists(st.integers(1, 100), min_size=1, max_size=60))
def test_fee_shares_sum_to_the_fee_in_proportion_to_size(fee: int, weights: list[int]) -> None:
    shares = split_fee(fee, weights)
    assert sum(shares) == fee
    assert all(s >= 0 for s in shares)
    total = sum(weights)
    for share, w in zip(shares, weights, strict=True):
        assert abs(share * total - fee * w) < total  # within one satoshi of the exact proportion


def test_equal_outputs_pay_shares_one_satoshi_apart_at_most() -> None:
    assert split_fee(10, [31, 31, 31]) == [4, 3, 3]
    assert split_fee(0, [31]) == [0]
    assert split_fee(4_330, [31, 43]) == [1_814, 2_516]
    with pytest.raises(InvalidAmount):
        split_fee(-1, [31])
    with pytest.raises(InvalidAmount):
        split_fee(5, [])
    assert batch_fee_cap([1_410, 1_410], multiple=10, floor=5_000) == 28_200
    assert batch_fee_cap([100], multiple=10, floor=5_000) == 5_000


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.sampled_from([10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000]), min_size=1, max_size=12),
    st.integers(1, 30),
    st.integers(0, 2**63 - 1),
)
def test_a_batch_transaction_pays_each_output_exactly_with_fair_fee_and_no_dust_change(
    amounts: list[int], fee_rate: int, seed: int
) -> None:
    payments = list(zip(RECIPIENTS, amounts, strict=False))
    spend = build_pool_spend(
        signer=SoftwareSigner.for_bip84(KEYRING),
        network="regtest",
        coins=COINS,
        exclude_owner=None,
        payments=payments,
        change_index=77,
        fee_rate=fee_rate,
        max_fee=10**7,
        rng_seed=seed,
    )
    assert spend.prepared.raw_tx is not None
    tx = Transaction.parse(spend.prepared.raw_tx)
    outputs = Counter((address_of_script(o.script_pubkey.data, "regtest"), o.value) for o in tx.vout)
    change = KEYRING.address(1, 77)
    expected = Counter(payments)
    if spend.change_amount:
        assert spend.change_amount >= 546
        expected[(change, spend.change_amount)] += 1
        assert spend.change_vout is not None
        assert tx.vout[spend.change_vout].value == spend.change_amount
    else:
        assert spend.change_vout is None
    assert outputs == expected  # every payout exact, nothing else but the change
    total_in = sum(c.amount for c in spend.inputs)
    assert total_in == sum(amounts) + spend.change_amount + spend.fee
    assert spend.fee >= spend.vsize * fee_rate - fee_rate  # the estimate is an upper bound of vsize
    assert spend.payment_vbytes == (P2WPKH_OUTPUT_VBYTES,) * len(payments)
    shares = split_fee(spend.fee, list(spend.payment_vbytes))
    assert sum(shares) == spend.fee
    assert max(shares) - min(shares) <= 1


def test_the_change_and_the_payouts_are_in_random_order() -> None:
    payments = [(RECIPIENTS[i], 100_000 * (i + 1)) for i in range(4)]
    change_positions: Counter[int] = Counter()
    orders: set[tuple[str, ...]] = set()
    for seed in range(60):
        spend = build_pool_spend(
            signer=SoftwareSigner.for_bip84(KEYRING),
            network="regtest",
            coins=COINS,
            exclude_owner=None,
            payments=payments,
            change_index=5,
            fee_rate=2,
            max_fee=10**6,
            rng_seed=seed,
        )
        assert spend.change_vout is not None
        assert spend.prepared.raw_tx is not None
        change_positions[spend.change_vout] += 1
        tx = Transaction.parse(spend.prepared.raw_tx)
        orders.add(tuple(str(address_of_script(o.script_pubkey.data, "regtest")) for o in tx.vout))
    # Change anywhere among the 5 outputs, every position seen; many orders, not BIP-69's one.
    assert set(change_positions) == set(range(5))
    assert len(orders) > 20
