"""Unknown outcome: the node took the send but its answer was lost (the connection dropped, or
no answer before the timeout). The broadcast must say SendOutcomeUnknown, not "rejected" nor
plain ChainError, and check_send must then find the send on chain; the amount moves once."""

from __future__ import annotations

import pytest

from mixhouse.chains.base import SendState
from mixhouse.errors import SendOutcomeUnknown
from tests.adapter_contract.harnesses import ChainHarness
from tests.adapter_contract.proxy import Mode, losing_proxy


@pytest.mark.parametrize("mode", ["dropped", "timeout"])
async def test_a_lost_answer_is_unknown_and_check_send_finds_the_send(chain: ChainHarness, mode: Mode) -> None:
    adapter = chain.adapter
    receiver = chain.fresh_address()
    prepared = await chain.payment(receiver, chain.amount, funded=True)
    async with losing_proxy(chain.node_url, chain.send_marker, mode) as proxy:
        # "dropped" waits for the node's answer before hanging up: a generous timeout so a
        # loaded machine's slow answer is still the one lost. "timeout" ends by the timeout.
        behind = chain.adapter_at(proxy.url, timeout=10.0 if mode == "dropped" else 1.5)
        try:
            with pytest.raises(SendOutcomeUnknown):
                await behind.broadcast(prepared)
        finally:
            await behind.aclose()
        if mode == "dropped":
            assert proxy.lost == 1  # the node answered: the send was done, its answer lost

    final = await chain.settle(prepared)
    assert final.state is SendState.CONFIRMED
    if adapter.has_idempotent_send:
        await adapter.broadcast(prepared)  # the caller's retry after an unknown outcome
        if chain.has_blocks:
            await chain.mine(1)
    assert await adapter.balance(receiver) == chain.amount
