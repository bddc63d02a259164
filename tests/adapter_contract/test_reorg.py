"""Reorgs: a deposit whose block is taken back stops counting, and a scan resumed from a cursor
taken before the reorg still reads everything the new branch holds."""

from __future__ import annotations

import pytest

from tests.adapter_contract.harnesses import ChainHarness
from tests.adapter_contract.test_scan import scan_to_tip, tip_cursor


async def test_a_reorged_deposit_stops_counting_and_the_new_branch_is_read(chain: ChainHarness) -> None:
    if not chain.can_reorg:
        pytest.skip(chain.no_reorg_reason)
    adapter = chain.adapter
    address = chain.fresh_address()
    start = await tip_cursor(chain)
    mark = await chain.mark()
    await chain.fund(address, chain.amount)
    await chain.mine(2)
    [old], before = await scan_to_tip(chain, [address], start)
    assert await adapter.transfer_confirmations(old) == 3
    assert await adapter.balance(address) == chain.amount

    await chain.reorg(mark)
    # No longer in a block: gone (EVM: the revert dropped it) or back in the mempool (Bitcoin).
    assert await adapter.transfer_confirmations(old) in (None, 0)
    assert await adapter.balance(address) == 0

    # The new branch, longer than the old one, holds another deposit at a height the stale
    # cursor has already passed: resuming from that cursor must still find it.
    await chain.fund(address, chain.amount + 1)
    await chain.mine(3)
    resumed, _ = await scan_to_tip(chain, [address], before.cursor)
    assert chain.amount + 1 in [t.amount for t in resumed]

    # What the balance counts is exactly the transfers still in a block.
    confirmed = 0
    for transfer in {t.ref: t for t in [old, *resumed]}.values():
        depth = await adapter.transfer_confirmations(transfer)
        if depth is not None and depth >= 1:
            confirmed += transfer.amount
    assert await adapter.balance(address) == confirmed
