"""UTXO-only behaviour (UtxoChainAdapter): coin selection refuses what the coins cannot pay, a
coin is unspent until spent, and a send whose coin another transaction took is recognised."""

from __future__ import annotations

import pytest

from mixhouse.chains.base import SendState, UtxoChainAdapter
from mixhouse.errors import BroadcastRejected, InsufficientFunds
from tests.adapter_contract.harnesses import BitcoinHarness, ChainHarness


def _utxo(chain: ChainHarness) -> BitcoinHarness:
    if not isinstance(chain.adapter, UtxoChainAdapter) or not isinstance(chain, BitcoinHarness):
        pytest.skip(f"{chain.name} is an account chain: no coins to select or spend")
    return chain


async def test_coins_that_cannot_pay_the_payment_and_fee_are_insufficient(chain: ChainHarness) -> None:
    btc = _utxo(chain)
    coin = await btc.coin(btc.amount)
    with pytest.raises(InsufficientFunds):
        await btc.spend([coin], btc.fresh_address(), btc.amount)  # nothing left for the fee
    owned = type(coin)(coin.txid, coin.vout, coin.amount * 10, coin.address, coin.key_chain, coin.key_index, "mix-a")
    with pytest.raises(InsufficientFunds):
        await btc.adapter.prepare_utxo_send(
            coins=[owned],
            exclude_owner="mix-a",  # the paying mix's own deposit is never an input
            payments=[(btc.fresh_address(), btc.amount)],
            change_index=btc.fresh_index(),
            fee_rate=await btc.adapter.fee_rate(),
            max_fee=btc.FEE_MARGIN,
            rng_seed=1,
        )


async def test_a_coin_spent_by_another_transaction_is_recognised(chain: ChainHarness) -> None:
    btc = _utxo(chain)
    adapter = btc.adapter
    coin = await btc.coin(btc.amount + btc.FEE_MARGIN)
    assert await adapter.unspent_amount(coin.txid, coin.vout) == coin.amount
    ours = await btc.spend([coin], btc.fresh_address(), btc.amount)
    theirs = await btc.spend([coin], btc.fresh_address(), btc.amount - 1)
    await adapter.broadcast(ours)
    with pytest.raises(BroadcastRejected):
        await adapter.broadcast(theirs)  # a double spend of the mempool's coin
    await btc.mine(1)
    assert await adapter.unspent_amount(coin.txid, coin.vout) is None
    assert not await adapter.is_spent_elsewhere(ours, [coin])
    assert await adapter.is_spent_elsewhere(theirs, [coin])
    assert (await adapter.check_send(theirs, earlier_sends=0)).state is SendState.NOT_FOUND
