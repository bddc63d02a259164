"""The Bitcoin adapter follows the active pool key generation (issue 12, key rotation): change and
top-ups go to generation ``g``'s chain (stored ``key_chain = 2g + 1``), the spend says which chain
its change is on, and a pool move spends every coin given to one output. No node: signing only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mixhouse.chains.base import PoolCoin
from mixhouse.chains.bitcoin.adapter import BitcoinAdapter
from mixhouse.chains.bitcoin.parse import parse_tx
from mixhouse.chains.bitcoin.rpc import BitcoinRpc
from mixhouse.errors import InvalidAmount
from mixhouse.keys.audited import KeyRetired, RetiredKeyGuard
from mixhouse.keys.bip84 import Bip84Keyring, generation_key_prefix
from mixhouse.keys.signer import SoftwareSigner
from tests.fixtures.bcoin import TEST_MNEMONIC


@pytest.fixture(scope="module")
def keyring() -> Bip84Keyring:
    return Bip84Keyring(TEST_MNEMONIC, "regtest")


@pytest_asyncio.fixture
async def adapter(keyring: Bip84Keyring) -> AsyncIterator[BitcoinAdapter]:
    # Never called: nothing here reads the node.
    chain = BitcoinAdapter(
        BitcoinRpc("http://127.0.0.1:9", user="u", password="p"),
        network="regtest",
        signer=RetiredKeyGuard(SoftwareSigner.for_bip84(keyring)),
        confirmations=2,
    )
    try:
        yield chain
    finally:
        await chain.aclose()


def _coin(keyring: Bip84Keyring, n: int, amount: int, *, account: int = 0) -> PoolCoin:
    address = keyring.address(1, n) if account == 0 else ""
    return PoolCoin(f"{n:064x}", n % 3, amount, address, 2 * account + 1, n, None)


async def test_the_adapter_follows_the_active_generation(adapter: BitcoinAdapter, keyring: Bip84Keyring) -> None:
    assert adapter.pool_chain == 1
    assert adapter.pool_address == keyring.address(1, 0)
    assert adapter.pool_key_chains() == {keyring.address(1, 0): 1}
    assert adapter.generation_key_ref(2) == "m/84'/1'/2'/1/" == generation_key_prefix("regtest", 2)
    new = adapter.use_pool_generation(1, draining=[0])
    assert new == adapter.pool_address == adapter.generation_address(1) != keyring.address(1, 0)
    assert adapter.generation_ref_address(adapter.generation_key_ref(1)) == new
    assert adapter.pool_chain == 3
    assert adapter.change_address(7) != keyring.address(1, 7)
    # The draining generation's top-up address stays watched, on its own chain.
    assert adapter.pool_key_chains() == {keyring.address(1, 0): 1, new: 3}
    adapter.use_pool_generation(1)
    assert adapter.pool_key_chains() == {new: 3}
    with pytest.raises(ValueError, match="key reference"):
        adapter.generation_ref_address("m/84'/0'/1'/1/")  # mainnet's coin type


async def test_a_spend_carries_the_chain_its_change_went_to(adapter: BitcoinAdapter, keyring: Bip84Keyring) -> None:
    coins = [_coin(keyring, 1, 300_000)]
    payee = keyring.address(0, 500)
    before = await adapter.prepare_utxo_send(
        coins=coins,
        exclude_owner=None,
        payments=[(payee, 100_000)],
        change_index=11,
        fee_rate=5,
        max_fee=50_000,
        rng_seed=1,
    )
    assert (before.change_chain, before.change_address) == (1, keyring.address(1, 11))
    adapter.use_pool_generation(1, draining=[0])
    after = await adapter.prepare_utxo_send(
        coins=coins,
        exclude_owner=None,
        payments=[(payee, 100_000)],
        change_index=11,
        fee_rate=5,
        max_fee=50_000,
        rng_seed=1,
    )
    assert after.change_chain == 3
    assert after.change_address == adapter.change_address(11)
    assert after.change_vout is not None
    outputs = parse_tx(after.prepared.raw_tx or b"").outputs
    assert len(outputs) == 2
    # A caller that read the generation itself names the chain: that wins over the adapter's.
    named = await adapter.prepare_utxo_send(
        coins=coins,
        exclude_owner=None,
        payments=[(payee, 100_000)],
        change_index=11,
        fee_rate=5,
        max_fee=50_000,
        rng_seed=1,
        change_chain=1,
    )
    assert (named.change_chain, named.change_address) == (1, keyring.address(1, 11))


async def test_a_pool_move_spends_every_coin_to_one_output(adapter: BitcoinAdapter, keyring: Bip84Keyring) -> None:
    coins = [_coin(keyring, n, 100_000 + n) for n in range(1, 5)]
    to = adapter.generation_address(1)
    fee = adapter.pool_move_fee(n_inputs=4, to_address=to, fee_rate=3)
    move = await adapter.prepare_pool_move(coins=coins, to_address=to, fee_rate=3)
    total = sum(c.amount for c in coins)
    assert move.fee == fee == total - move.change_amount
    assert move.change_vout == 0
    assert move.inputs == tuple(coins)
    tx = parse_tx(move.prepared.raw_tx or b"")
    assert sorted((i.prev_txid, i.prev_vout) for i in tx.inputs) == sorted((c.txid, c.vout) for c in coins)
    assert len(tx.outputs) == 1
    assert tx.outputs[0].value == move.change_amount
    # The same coins sign the same transaction (a retry after a crash stores the same bytes).
    again = await adapter.prepare_pool_move(coins=coins, to_address=to, fee_rate=3)
    assert again.prepared.txid == move.prepared.txid
    with pytest.raises(InvalidAmount):
        await adapter.prepare_pool_move(coins=[_coin(keyring, 9, 500)], to_address=to, fee_rate=3)
    with pytest.raises(InvalidAmount):
        await adapter.prepare_pool_move(coins=[], to_address=to, fee_rate=3)


async def test_a_retired_generation_signs_no_move(adapter: BitcoinAdapter, keyring: Bip84Keyring) -> None:
    signer = adapter._signer  # the guard the runtime would hold
    assert isinstance(signer, RetiredKeyGuard)
    signer.set_retired(frozenset({adapter.generation_key_ref(0)}))
    with pytest.raises(KeyRetired):
        await adapter.prepare_pool_move(
            coins=[_coin(keyring, 1, 300_000)], to_address=adapter.generation_address(1), fee_rate=3
        )
