"""Node down: every call fails as ChainError, and a send that could not be delivered is neither
"outcome unknown" nor "rejected" (nothing left, so it may simply be sent again)."""

from __future__ import annotations

import pytest

from mixhouse.errors import BroadcastRejected, ChainError, SendOutcomeUnknown
from tests.adapter_contract.harnesses import ChainHarness, closed_port_url
from tests.adapter_contract.test_scan import scan_to_tip, tip_cursor
from tests.scanning import engine_scan


async def test_an_unreachable_node_is_a_chain_error(chain: ChainHarness) -> None:
    receiver = chain.fresh_address()
    start = await tip_cursor(chain)
    await chain.fund(receiver, chain.amount)
    [deposit], _ = await scan_to_tip(chain, [receiver], start)
    prepared = await chain.payment(chain.fresh_address(), chain.amount, funded=True)
    down = chain.adapter_at(closed_port_url(chain.node_url), timeout=2.0)
    try:
        with pytest.raises(ChainError) as caught:
            await down.broadcast(prepared)
        assert not isinstance(caught.value, SendOutcomeUnknown | BroadcastRejected)
        with pytest.raises(ChainError):
            await down.check_send(prepared, earlier_sends=0)
        with pytest.raises(ChainError):
            await down.balance(receiver)
        with pytest.raises(ChainError):
            await engine_scan(down, [receiver], start)
        with pytest.raises(ChainError):
            await down.transfer_confirmations(deposit)
    finally:
        await down.aclose()
    # Nothing left: the send is still not on chain, and may be broadcast for the first time.
    assert (await chain.adapter.check_send(prepared, earlier_sends=0)).confirmations == 0
