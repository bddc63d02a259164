"""One scanning engine per node and process, shared by every consumer of that node.

:class:`ChainWatches` holds a :class:`~mixhouse.watch.engine.ChainWatch` per node (an Ethereum
node by its JSON-RPC URL, a Bitcoin node by its RPC URL), made on first use with the process's
reorg policy and database. The process's wiring (:mod:`mixhouse.app`) makes one and hands it to
the mixer's deposit scans (:class:`mixhouse.watch.scans.DepositScanner`) and to wallet sync's
node sources (:func:`mixhouse.wallets.sources.configured.sources_from_settings`), so a block
one of them read is served to the others from the engine's cache (:class:`~mixhouse.watch.engine.BlockCache`)
instead of being fetched again. Each feature alone makes its own.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.chains.bitcoin.rpc import BitcoinRpc
from mixhouse.watch.bitcoin import BitcoinBlocks
from mixhouse.watch.engine import DEFAULT_REORG_MAX_DEPTH, ChainWatch
from mixhouse.watch.evm import EvmBlocks


class ChainWatches:
    """The ChainWatch of each node of a process.

    Args:
        max_depth: the reorg policy's depth (``Settings.reorg_max_depth``), ``>= 1``.
        engine: where the engines keep their block windows and stops; ``None``: in memory.
    """

    def __init__(self, *, max_depth: int = DEFAULT_REORG_MAX_DEPTH, engine: AsyncEngine | None = None) -> None:
        self.max_depth = max_depth
        self._engine = engine
        self._watches: dict[tuple[str, str], ChainWatch] = {}
        self._owned: list[EvmBlocks] = []

    def evm(self, rpc_url: str) -> ChainWatch:
        """The ChainWatch of the Ethereum node at ``rpc_url`` (over an :class:`EvmBlocks` with
        its own HTTP client, closed by :meth:`aclose`)."""
        watch = self._watches.get(("ETH", rpc_url))
        if watch is None:
            reader = EvmBlocks(rpc_url)
            self._owned.append(reader)
            watch = self._watches["ETH", rpc_url] = ChainWatch(reader, max_depth=self.max_depth, engine=self._engine)
        return watch

    def bitcoin(self, rpc: BitcoinRpc) -> ChainWatch:
        """The ChainWatch of the Bitcoin node ``rpc`` speaks to, by its URL: the first client
        given for a URL is the one its blocks are read with (not closed here)."""
        watch = self._watches.get(("BTC", rpc.url))
        if watch is None:
            watch = ChainWatch(BitcoinBlocks(rpc), max_depth=self.max_depth, engine=self._engine)
            self._watches["BTC", rpc.url] = watch
        return watch

    async def aclose(self) -> None:
        """Close the HTTP clients of the Ethereum readers made here and forget every engine."""
        for reader in self._owned:
            await reader.aclose()
        self._owned.clear()
        self._watches.clear()
