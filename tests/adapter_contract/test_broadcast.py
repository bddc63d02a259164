"""Broadcast and rebroadcast: a send moves its amount once, however often it is broadcast
(where the chain's send is idempotent), and check_send follows it to final."""

from __future__ import annotations

import pytest

from mixhouse.chains.base import SendState
from tests.adapter_contract.harnesses import ChainHarness


async def test_a_send_moves_its_amount_once_and_check_send_follows_it(chain: ChainHarness) -> None:
    adapter = chain.adapter
    receiver = chain.fresh_address()
    prepared = await chain.payment(receiver, chain.amount, funded=True)
    assert prepared.amount == chain.amount
    assert (await adapter.check_send(prepared, earlier_sends=0)).state is SendState.NOT_FOUND

    await adapter.broadcast(prepared)
    final = await chain.settle(prepared)
    assert final.state is SendState.CONFIRMED
    assert final.confirmations >= adapter.confirmations_required
    assert final.network_fee_paid is not None
    assert 0 <= final.network_fee_paid <= prepared.network_fee_max
    assert await adapter.balance(receiver) == chain.amount

    if adapter.has_idempotent_send:
        await adapter.broadcast(prepared)  # already mined: not an error, and moves nothing
        if chain.has_blocks:
            await chain.mine(1)
        assert await adapter.balance(receiver) == chain.amount
    else:
        # No idempotent send: the caller asks check_send, which counts this send as the first of
        # its pair and sees no second one, so it never sends again.
        assert (await adapter.check_send(prepared, earlier_sends=1)).state is SendState.NOT_FOUND


async def test_rebroadcast_while_pending_is_not_an_error(chain: ChainHarness) -> None:
    if not chain.has_mempool:
        pytest.skip(chain.no_mempool_reason)
    if not chain.adapter.has_idempotent_send:  # pragma: no cover - every chain with a mempool has one
        pytest.skip("a send that is not idempotent is never broadcast twice")
    adapter = chain.adapter
    receiver = chain.fresh_address()
    prepared = await chain.payment(receiver, chain.amount, funded=True)
    async with chain.blocks_held():
        await adapter.broadcast(prepared)
        await adapter.broadcast(prepared)  # in the mempool already
        pending = await adapter.check_send(prepared, earlier_sends=0)
        assert (pending.state, pending.confirmations, pending.network_fee_paid) == (SendState.PENDING, 0, None)
    final = await chain.settle(prepared)
    assert final.state is SendState.CONFIRMED
    assert await adapter.balance(receiver) == chain.amount
