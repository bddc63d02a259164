"""Scan and confirmations: a deposit is found once per ref, with its amount, and its
confirmations grow to the required depth."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from mixhouse.chains.base import ScanResult, Transfer
from tests.adapter_contract.harnesses import ChainHarness
from tests.scanning import engine_scan


async def tip_cursor(chain: ChainHarness) -> str | None:
    """The cursor a scan with nothing watched gives: the chain as it is now."""
    return (await engine_scan(chain.adapter, [], None)).cursor


async def scan_to_tip(
    chain: ChainHarness, watched: Sequence[str], cursor: str | None
) -> tuple[list[Transfer], ScanResult]:
    """Scan from ``cursor`` until the scan has read the tip it saw (scans are bounded per
    call); every transfer seen, in order, and the last result."""
    seen: list[Transfer] = []
    for _ in range(20):
        result = await engine_scan(chain.adapter, watched, cursor)
        seen.extend(result.transfers)
        cursor = result.cursor
        if result.scanned is None or result.tip is None or result.scanned >= result.tip:
            return seen, result
    raise AssertionError("the scan never reached the tip")


async def test_scan_finds_a_deposit_to_a_watched_address_only(chain: ChainHarness) -> None:
    watched, other, unwatched = (chain.fresh_address() for _ in range(3))
    start = await tip_cursor(chain)
    await chain.fund(watched, chain.amount)
    await chain.fund(unwatched, chain.amount + 1)

    seen, result = await scan_to_tip(chain, [watched, other], start)
    [transfer] = seen
    assert transfer.to_address == watched
    assert transfer.amount == chain.amount
    assert transfer.confirmations >= 1
    assert (transfer.block_number is not None) is chain.has_blocks
    assert await chain.adapter.transfer_confirmations(transfer) == transfer.confirmations

    # The ref is stable: read again from the start, the same deposit has the same ref; read on
    # from the cursor, nothing new appears.
    again, _ = await scan_to_tip(chain, [watched, other], start)
    assert [t.ref for t in again] == [transfer.ref]
    later, _ = await scan_to_tip(chain, [watched, other], result.cursor)
    assert {t.ref for t in later} <= {transfer.ref}


async def test_two_deposits_to_one_address_have_two_refs(chain: ChainHarness) -> None:
    address = chain.fresh_address()
    start = await tip_cursor(chain)
    await chain.fund(address, chain.amount)
    await chain.fund(address, chain.amount + 1)
    seen, _ = await scan_to_tip(chain, [address], start)
    assert sorted(t.amount for t in seen) == [chain.amount, chain.amount + 1]
    assert len({t.ref for t in seen}) == 2


async def test_confirmations_grow_with_blocks_to_the_required_depth(chain: ChainHarness) -> None:
    if not chain.has_blocks:
        pytest.skip(chain.no_blocks_reason)
    address = chain.fresh_address()
    start = await tip_cursor(chain)
    await chain.fund(address, chain.amount)
    [transfer], _ = await scan_to_tip(chain, [address], start)
    first = await chain.adapter.transfer_confirmations(transfer)
    assert first is not None
    assert first < chain.adapter.confirmations_required  # else the growth below proves nothing
    await chain.mine(chain.adapter.confirmations_required)
    assert await chain.adapter.transfer_confirmations(transfer) == first + chain.adapter.confirmations_required
    [rescanned], _ = await scan_to_tip(chain, [address], start)
    assert rescanned.ref == transfer.ref
    assert rescanned.confirmations >= chain.adapter.confirmations_required


async def test_a_listed_transfer_is_final_without_blocks(chain: ChainHarness) -> None:
    if chain.has_blocks:
        pytest.skip("a chain with blocks: confirmations grow, see the test above")
    address = chain.fresh_address()
    start = await tip_cursor(chain)
    await chain.fund(address, chain.amount)
    [transfer], _ = await scan_to_tip(chain, [address], start)
    assert transfer.confirmations == chain.adapter.confirmations_required
