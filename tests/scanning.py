"""Deposit scans for tests: one pass of the scanning engine (:class:`DepositScanner`), as the
mixer runs it, in memory (no block window in PostgreSQL, so an orphaned position rewinds the
policy's full depth)."""

from __future__ import annotations

from collections.abc import Sequence

from mixhouse.chains.base import ChainAdapter, ScanResult
from mixhouse.watch.scans import DepositScanner


async def engine_scan(adapter: ChainAdapter, watched: Sequence[str], cursor: str | None) -> ScanResult:
    """One deposit scan of ``adapter``'s asset after ``cursor`` on a fresh in-memory scanner."""
    scanner = DepositScanner()
    try:
        return await scanner.scan(adapter, watched, cursor)
    finally:
        await scanner.aclose()
