"""Insufficient funds: a send of money the source does not have is refused and moves nothing."""

from __future__ import annotations

import pytest

from mixhouse.chains.base import SendState
from mixhouse.errors import BroadcastRejected, SendOutcomeUnknown
from tests.adapter_contract.harnesses import ChainHarness


async def test_a_send_from_an_empty_source_is_rejected_and_moves_nothing(chain: ChainHarness) -> None:
    adapter = chain.adapter
    receiver = chain.fresh_address()
    try:
        prepared = await chain.payment(receiver, chain.amount, funded=False)
    except BroadcastRejected as refused:
        # Refused before signing (ERC-20: eth_estimateGas of the transfer reverts), which is
        # the same answer one step earlier: a definite no, not an unknown outcome.
        refused_early: BroadcastRejected | None = refused
    else:
        refused_early = None
    if refused_early is not None:
        assert not isinstance(refused_early, SendOutcomeUnknown)
        assert await adapter.balance(receiver) == 0
        return
    with pytest.raises(BroadcastRejected) as caught:
        await adapter.broadcast(prepared)
    assert not isinstance(caught.value, SendOutcomeUnknown)
    assert (await adapter.check_send(prepared, earlier_sends=0)).state is SendState.NOT_FOUND
    if chain.has_blocks:
        await chain.mine(1)
    assert (await adapter.check_send(prepared, earlier_sends=0)).state is SendState.NOT_FOUND
    assert await adapter.balance(receiver) == 0
