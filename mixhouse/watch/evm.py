"""The Ethereum block reader of the scanning engine, over the execution JSON-RPC API.

Blocks are ``eth_getBlockByNumber(n, true)`` (full transactions), requested ``concurrency`` at a
time and handed on in height order. :meth:`EvmBlocks.call` is the same client for what a watcher
asks besides blocks (receipts, ``eth_getLogs``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from mixhouse.errors import ChainError
from mixhouse.watch.engine import Block

# One TLS context for every client: building one loads the CA bundle (~40 ms), which a client
# made per scan (mixhouse.mixer.deposits) would pay each time.
TLS = httpx.create_ssl_context()


def hex_int(value: Any) -> int:
    """An Ethereum JSON-RPC quantity (``"0x1a"``) as an int."""
    return int(str(value), 16)


class EvmBlocks:
    """:class:`~mixhouse.watch.engine.BlockReader` of an Ethereum node.

    Args:
        rpc_url: the node's JSON-RPC URL.
        client: an HTTP client to use (not closed here); ``None``: one of its own.
        concurrency: blocks requested at a time, ``>= 1``.

    Raises:
        ValueError: ``concurrency`` below 1.
    """

    chain = "ETH"
    # Blocks its ChainWatch keeps for the other consumers (engine.BlockCache): ~13 minutes of
    # mainnet, tens of MB of decoded blocks at most.
    cache_blocks = 64

    def __init__(self, rpc_url: str, *, client: httpx.AsyncClient | None = None, concurrency: int = 8) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._url = rpc_url
        self._client = client or httpx.AsyncClient(timeout=30.0, verify=TLS)
        self._owns_client = client is None
        self._ids = itertools.count(1)
        self._concurrency = concurrency

    async def aclose(self) -> None:
        """Close the HTTP client if this reader made it."""
        if self._owns_client:
            await self._client.aclose()

    async def call(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call; its ``result``.

        Raises:
            ChainError: HTTP failure, a malformed answer or a JSON-RPC error.
        """
        try:
            response = await self._client.post(
                self._url, json={"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
            )
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ChainError(f"{method} failed: {exc}") from exc
        if body.get("error") is not None:
            raise ChainError(f"{method} failed: {body['error']}")
        return body.get("result")

    async def tip(self) -> int:
        """``eth_blockNumber``. Raises ChainError: the node failed."""
        return hex_int(await self.call("eth_blockNumber"))

    async def hash_at(self, height: int) -> str | None:
        """The hash of block ``height``, ``None`` above the tip. Raises ChainError."""
        block = await self.call("eth_getBlockByNumber", hex(height), False)
        return None if block is None else str(block["hash"])

    async def first_height_since(self, when: int) -> int:
        """The lowest height whose block timestamp is at or after ``when`` (Unix seconds), the
        tip's height + 1 if none is yet: a binary search over ``eth_getBlockByNumber`` headers
        (about log2(tip) requests). Block timestamps never decrease (the Ethereum yellow paper's
        header validity: a block's timestamp exceeds its parent's).

        Raises:
            ChainError: the node failed.
        """
        low, high = 0, await self.tip() + 1
        while low < high:
            middle = (low + high) // 2
            block = await self.call("eth_getBlockByNumber", hex(middle), False)
            # None: the chain shortened under the search; taken as "not yet" (a lower start).
            if block is None or hex_int(block["timestamp"]) >= when:
                high = middle
            else:
                low = middle + 1
        return low

    async def blocks(self, start: int, end: int) -> AsyncGenerator[Block | None, None]:
        """Blocks ``start..end`` with full transactions; ``None`` for one gone since the tip was read.

        Raises:
            ChainError: the node failed.
        """
        for chunk in range(start, end + 1, self._concurrency):
            numbers = range(chunk, min(end, chunk + self._concurrency - 1) + 1)
            found = await asyncio.gather(*(self.call("eth_getBlockByNumber", hex(n), True) for n in numbers))
            for number, data in zip(numbers, found, strict=True):
                if data is None:
                    yield None
                    return
                parent = data.get("parentHash")
                yield Block(number, str(data["hash"]), None if number == 0 or parent is None else str(parent), data)
