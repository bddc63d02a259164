"""Payout transactions built from pool coins: never the mix's own deposit, exact outputs."""

from __future__ import annotations

import hashlib

import pytest
from embit.transaction import Transaction  # type: ignore[import-untyped]

from mixhouse.chains.base import PoolCoin
from mixhouse.chains.bitcoin.networks import address_of_script
from mixhouse.chains.bitcoin.pool_spend import build_pool_spend
from mixhouse.errors import InsufficientFunds
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.keys.signer import SoftwareSigner

MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


@pytest.fixture(scope="module")
def keyring() -> Bip84Keyring:
    return Bip84Keyring(MNEMONIC, "regtest")


def _coin(keyring: Bip84Keyring, n: int, amount: int, owner: str | None, chain: int = 0) -> PoolCoin:
    txid = hashlib.sha256(f"coin{n}".encode()).hexdigest()
    return PoolCoin(txid, n % 3, amount, keyring.address(chain, n), chain, n, owner)


def test_a_payout_never_spends_the_paying_mix_deposit(keyring: Bip84Keyring) -> None:
    own = _coin(keyring, 1, 5_000_000, "mix-a")  # the biggest, and enough alone
    other = _coin(keyring, 2, 3_000_000, "mix-b")
    spend = build_pool_spend(
        signer=SoftwareSigner.for_bip84(keyring),
        network="regtest",
        coins=[own, other],
        exclude_owner="mix-a",
        payments=[(keyring.address(0, 99), 1_000_000)],
        change_index=7,
        fee_rate=5,
        max_fee=50_000,
        rng_seed=1,
    )
    assert spend.inputs == (other,)
    tx = Transaction.parse(spend.prepared.raw_tx)
    assert [(vin.txid.hex(), vin.vout) for vin in tx.vin] == [(other.txid, other.vout)]
    outputs = {address_of_script(out.script_pubkey.data, "regtest"): out.value for out in tx.vout}
    assert outputs[keyring.address(0, 99)] == 1_000_000
    assert spend.change_vout is not None
    assert address_of_script(tx.vout[spend.change_vout].script_pubkey.data, "regtest") == keyring.address(1, 7)
    assert tx.vout[spend.change_vout].value == spend.change_amount
    assert other.amount == 1_000_000 + spend.change_amount + spend.fee
    assert spend.prepared.txid == tx.txid().hex()


def test_only_the_mix_own_coins_means_insufficient_funds(keyring: Bip84Keyring) -> None:
    with pytest.raises(InsufficientFunds):
        build_pool_spend(
            signer=SoftwareSigner.for_bip84(keyring),
            network="regtest",
            coins=[_coin(keyring, 1, 5_000_000, "mix-a")],
            exclude_owner="mix-a",
            payments=[(keyring.address(0, 99), 1_000_000)],
            change_index=0,
            fee_rate=5,
            max_fee=50_000,
            rng_seed=1,
        )


def test_the_same_send_signs_the_same_transaction(keyring: Bip84Keyring) -> None:
    coins = [_coin(keyring, n, 1_000_000 * n, None, chain=1) for n in range(1, 6)]
    kwargs = {
        "signer": SoftwareSigner.for_bip84(keyring),
        "network": "regtest",
        "coins": coins,
        "exclude_owner": None,
        "payments": [(keyring.address(0, 50), 2_500_000)],
        "change_index": 3,
        "fee_rate": 2,
        "max_fee": 10_000,
    }
    first = build_pool_spend(**kwargs, rng_seed=42)  # type: ignore[arg-type]
    again = build_pool_spend(**kwargs, rng_seed=42)  # type: ignore[arg-type]
    assert first.prepared.raw_tx == again.prepared.raw_tx
