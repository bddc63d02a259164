"""Deposit scans for tests: one pass of the scanning engine (:class:`DepositScanner`), as the
mixer runs it, in memory (no block window in PostgreSQL, so an orphaned position rewinds the
policy's full depth)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mixhouse.chains.base import ChainAdapter, ScanResult
from mixhouse.watch.evm import EvmBlocks
from mixhouse.watch.scans import DepositScanner
from tests.fixtures.anvil import Anvil


async def engine_scan(adapter: ChainAdapter, watched: Sequence[str], cursor: str | None) -> ScanResult:
    """One deposit scan of ``adapter``'s asset after ``cursor`` on a fresh in-memory scanner."""
    scanner = DepositScanner()
    try:
        return await scanner.scan(adapter, watched, cursor)
    finally:
        await scanner.aclose()


class CountingBlocks(EvmBlocks):
    """The engine's Ethereum reader, counting the full block reads (``eth_getBlockByNumber``
    with transactions) by height and the ``eth_getLogs`` requests by block hash."""

    def __init__(self, rpc_url: str) -> None:
        super().__init__(rpc_url)
        self.reads: list[int] = []
        self.log_requests: list[str] = []

    async def call(self, method: str, *params: Any) -> Any:
        if method == "eth_getBlockByNumber" and params[1] is True:
            self.reads.append(int(params[0], 16))
        if method == "eth_getLogs":
            self.log_requests.append(str(params[0].get("blockHash")))
        return await super().call(method, *params)


async def position_at(anvil: Anvil, height: int) -> str:
    """The engine's position ``"<height>:<hash>"`` of anvil's block ``height``."""
    block = await anvil.rpc("eth_getBlockByNumber", [hex(height), False])
    return f"{height}:{block['hash']}"
