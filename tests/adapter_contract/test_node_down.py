"""Node down: every call fails as ChainError, and a send that could not be delivered is neither
"outcome unknown" nor "rejected" (nothing left, so it may simply be sent again)."""

from __future__ import annotations

import pytest

from mixhouse.chains.base import Transfer
from mixhouse.errors import BroadcastRejected, ChainError, SendOutcomeUnknown
from tests.adapter_contract.harnesses import ChainHarness, closed_port_url


async def test_an_unreachable_node_is_a_chain_error(chain: ChainHarness) -> None:
    receiver = chain.fresh_address()
    prepared = await chain.payment(receiver, chain.amount, funded=False)
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
            await down.scan([receiver], None)
        with pytest.raises(ChainError):
            await down.transfer_confirmations(_transfer_like(chain, prepared.txid, receiver))
    finally:
        await down.aclose()


def _transfer_like(chain: ChainHarness, txid: str | None, receiver: str) -> Transfer:
    """A transfer of the shape this chain's refs have (its confirmations are asked of the node)."""
    if txid is None:
        ref = f"{receiver}#0"  # Jobcoin: the receiver's first incoming transfer
    elif chain.name == "bitcoin":
        ref = f"{txid}:0"
    else:
        ref = txid
    return Transfer(receiver, (), chain.amount, ref, None, 0)
