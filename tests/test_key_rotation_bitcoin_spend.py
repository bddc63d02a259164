"""Bitcoin pool generations on a real bcoin regtest node (issue 12, key rotation groundwork): a
generation-0 coin pays with its change to generation 1's chain (``m/84'/1'/1'/1/i``, stored
``key_chain = 3``), that change coin then spends, signed by account 1's key; once generation 0 is
retired, the guard refuses its coins before anything is signed."""

from __future__ import annotations

from decimal import Decimal

import pytest

from mixhouse.chains.base import PoolCoin, SendState
from mixhouse.chains.bitcoin.adapter import BitcoinAdapter
from mixhouse.chains.bitcoin.pool_spend import build_pool_spend
from mixhouse.chains.bitcoin.rpc import btc_to_sat
from mixhouse.chains.bitcoin.single_spend import build_single_spend
from mixhouse.keys.audited import KeyRetired, RetiredKeyGuard
from mixhouse.keys.bip84 import Bip84Keyring, coin_key_path, generation_key_prefix, p2wpkh_address, pool_key_chain
from mixhouse.keys.signer import SoftwareSigner
from tests.fixtures.bcoin import Bcoin

# High indices: other tests on the session's node use the low ones.
OLD_INDEX = 910_001
NEW_INDEX = 910_002


async def _coin_at(bcoin: Bcoin, txid: str, address: str, key_chain: int, key_index: int) -> PoolCoin:
    tx = await bcoin.rpc("getrawtransaction", txid, True)
    for out in tx["vout"]:
        if out["scriptPubKey"].get("address") == address or address in out["scriptPubKey"].get("addresses", []):
            return PoolCoin(
                txid, int(out["n"]), btc_to_sat(Decimal(str(out["value"]))), address, key_chain, key_index, None
            )
    raise AssertionError(f"{txid} pays nothing to {address}")


async def test_old_generation_coin_pays_change_to_the_new_generation(
    bcoin: Bcoin, btc_adapter: BitcoinAdapter, btc_keyring: Bip84Keyring
) -> None:
    guard = RetiredKeyGuard(SoftwareSigner.for_bip84(btc_keyring))
    old_chain, new_chain = pool_key_chain(0), pool_key_chain(1)
    old_address = btc_adapter.change_address(OLD_INDEX)
    funding = await bcoin.fund(old_address, 200_000)
    await bcoin.mine(1)
    old_coin = await _coin_at(bcoin, funding, old_address, old_chain, OLD_INDEX)
    assert old_coin.amount == 200_000

    payee = btc_adapter.deposit_address(910_003)
    spend = build_pool_spend(
        signer=guard,
        network="regtest",
        coins=[old_coin],
        exclude_owner=None,
        payments=[(payee, 50_000)],
        change_index=NEW_INDEX,
        fee_rate=10,
        max_fee=10_000,
        rng_seed=1,
        change_chain=new_chain,
    )
    new_address = p2wpkh_address(guard.public_key(coin_key_path("regtest", new_chain, NEW_INDEX)), "regtest")
    assert coin_key_path("regtest", new_chain, NEW_INDEX) == f"m/84'/1'/1'/1/{NEW_INDEX}"
    assert new_address != btc_adapter.change_address(NEW_INDEX)  # not generation 0's key
    assert spend.change_vout is not None
    assert spend.change_amount == 200_000 - 50_000 - spend.fee
    await btc_adapter.broadcast(spend.prepared)
    await bcoin.mine(3)
    assert (await btc_adapter.check_send(spend.prepared)).state is SendState.CONFIRMED
    assert await btc_adapter.balance(new_address) == spend.change_amount
    assert await btc_adapter.balance(old_address) == 0

    # Generation 0 retires: its keys refuse, generation 1's coin still spends (account 1's key).
    guard.set_retired(frozenset({generation_key_prefix("regtest", 0)}))
    new_coin = PoolCoin(
        spend.prepared.txid or "", spend.change_vout, spend.change_amount, new_address, new_chain, NEW_INDEX, None
    )
    onward = build_single_spend(
        signer=guard, network="regtest", coin=new_coin, to_address=payee, amount_sat=new_coin.amount - 2_000
    )
    await btc_adapter.broadcast(onward)
    await bcoin.mine(3)
    assert (await btc_adapter.check_send(onward)).state is SendState.CONFIRMED
    assert await btc_adapter.balance(new_address) == 0

    second = await bcoin.fund(old_address, 100_000)
    await bcoin.mine(1)
    stray = await _coin_at(bcoin, second, old_address, old_chain, OLD_INDEX)
    with pytest.raises(KeyRetired):
        build_single_spend(signer=guard, network="regtest", coin=stray, to_address=payee, amount_sat=90_000)
