"""The Bitcoin block reader of the scanning engine, over Bitcoin Core's JSON-RPC.

Blocks are ``getblockhash`` then ``getblock <hash> 3`` (transactions with their inputs'
previous outputs, :meth:`BitcoinRpc.getblock_verbose`). They are requested ``concurrency`` at a
time, so the node prepares the next ones while the watchers match one; they are handed on in
height order, and those still in flight when the consumer stops (or a read fails) are cancelled.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from mixhouse.chains.bitcoin.rpc import BitcoinRpc
from mixhouse.watch.engine import Block

# (height, block hash or None above the tip, block or None if unknown to the node)
_Read = tuple[int, str | None, dict[str, Any] | None]


class BitcoinBlocks:
    """:class:`~mixhouse.watch.engine.BlockReader` of a Bitcoin node.

    Args:
        rpc: the node client (the one the adapter uses; not closed here).
        concurrency: blocks requested at a time, ``>= 1``. A few keep the node busy; more only
            hold more decoded blocks in memory (a full mainnet block with prevouts is several MB).

    Raises:
        ValueError: ``concurrency`` below 1.
    """

    chain = "BTC"

    def __init__(self, rpc: BitcoinRpc, *, concurrency: int = 4) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.rpc = rpc
        self._concurrency = concurrency

    async def tip(self) -> int:
        """``getblockcount``. Raises ChainError: the node failed."""
        return await self.rpc.getblockcount()

    async def hash_at(self, height: int) -> str | None:
        """``getblockhash``, ``None`` above the tip. Raises ChainError: the node failed."""
        return await self.rpc.getblockhash(height)

    async def blocks(self, start: int, end: int) -> AsyncGenerator[Block | None, None]:
        """Blocks ``start..end``; ``None`` for one gone since the tip was read.

        Raises:
            ChainError: the node failed (the blocks in flight are cancelled).
        """
        heights = iter(range(start, end + 1))
        window: deque[asyncio.Task[_Read]] = deque()
        try:
            for height in heights:
                window.append(asyncio.create_task(self._read(height)))
                if len(window) == self._concurrency:
                    break
            while window:
                height, block_hash, data = await window.popleft()
                following = next(heights, None)
                if following is not None:
                    window.append(asyncio.create_task(self._read(following)))
                if block_hash is None or data is None:
                    yield None
                    return
                parent = data.get("previousblockhash")
                yield Block(height, block_hash, None if parent is None else str(parent), data)
        finally:
            for task in window:
                task.cancel()
            await asyncio.gather(*window, return_exceptions=True)

    async def _read(self, height: int) -> _Read:
        block_hash = await self.rpc.getblockhash(height)
        if block_hash is None:
            return height, None, None
        return height, block_hash, await self.rpc.getblock_verbose(block_hash)
