"""The Bitcoin block reader of the scanning engine, over Bitcoin Core's JSON-RPC.

Blocks are ``getblockhash`` then ``getblock <hash> 3`` (transactions with their inputs'
previous outputs, :meth:`BitcoinRpc.getblock_verbose`). They are requested ``concurrency`` at a
time, so the node prepares the next ones while the watchers match one; they are handed on in
height order, and those still in flight when the consumer stops (or a read fails) are cancelled.

:class:`BitcoinMempool` reads what is not in a block yet: the transactions of the node's
mempool paying watched addresses (``getrawmempool``, then ``getrawtransaction`` of each new
txid, decoded once and cached while it stays in the mempool).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from mixhouse.chains.base import Transfer
from mixhouse.chains.bitcoin import networks
from mixhouse.chains.bitcoin.rpc import BitcoinRpc, btc_to_sat
from mixhouse.errors import ChainError
from mixhouse.watch.engine import Block

# (height, block hash or None above the tip, block or None if unknown to the node)
_Read = tuple[int, str | None, dict[str, Any] | None]
# An output as the mempool reader keeps it: (vout index, canonical address or None, satoshi).
_Output = tuple[int, str | None, int]
# Transactions asked for at once.
_FETCH_CONCURRENCY = 8


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
    # Blocks its ChainWatch keeps for the other consumers (engine.BlockCache): a mainnet block
    # at verbosity 3 is several MB decoded, and consumers at the tip meet within a block or two.
    cache_blocks = 8

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


class BitcoinMempool:
    """The transfers to watched addresses waiting in a Bitcoin node's mempool.

    Each output paying a watched address is a :class:`~mixhouse.chains.base.Transfer` with
    ``block_number=None`` and ``confirmations=0``, ``ref`` ``"<txid>:<vout>"`` (the same ref
    the block's :class:`~mixhouse.watch.deposits.BitcoinDeposits` gives once it is mined), the
    senders from the outputs its inputs spend (``getrawtransaction`` of each parent: a mempool
    transaction carries no prevouts; needs ``-txindex`` for confirmed parents, or the parent in
    the mempool).

    Args:
        rpc: the node client (not closed here).
        network: the Bitcoin network's name (``"regtest"``...).

    Keep one per process: decoded outputs are cached by txid and pruned to the mempool on each
    read, so a large mempool is decoded once.
    """

    def __init__(self, rpc: BitcoinRpc, network: str) -> None:
        self.rpc = rpc
        self._network = network
        self._outputs_of: dict[str, tuple[_Output, ...]] = {}

    def _address(self, script_pubkey: dict[str, Any]) -> str | None:
        return networks.address_of_script(bytes.fromhex(str(script_pubkey["hex"])), self._network)

    def _outputs(self, tx: dict[str, Any]) -> tuple[_Output, ...]:
        try:
            return tuple(
                (int(o["n"]), self._address(o["scriptPubKey"]), btc_to_sat(o["value"])) for o in tx.get("vout", [])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainError(f"transaction {tx.get('txid')} has an unreadable output") from exc

    async def transfers(self, wanted: set[str]) -> list[Transfer]:
        """Outputs paying ``wanted`` (canonical addresses) in mempool transactions.

        Raises:
            ChainError: the node failed, or a parent transaction cannot be found (no ``-txindex``).
        """
        if not wanted:
            return []
        txids = await self.rpc.getrawmempool()
        current = set(txids)
        for stale in set(self._outputs_of) - current:
            del self._outputs_of[stale]
        fresh = [txid for txid in txids if txid not in self._outputs_of]
        for offset in range(0, len(fresh), _FETCH_CONCURRENCY):
            batch = fresh[offset : offset + _FETCH_CONCURRENCY]
            txs = await asyncio.gather(*(self.rpc.gettransaction_verbose(txid) for txid in batch))
            for txid, tx in zip(batch, txs, strict=True):
                if tx is not None:  # else: mined or evicted meanwhile
                    self._outputs_of[txid] = self._outputs(tx)
        found: list[Transfer] = []
        for txid in txids:
            hits = [(n, a, v) for n, a, v in self._outputs_of.get(txid, ()) if a in wanted and v > 0]
            if not hits:
                continue
            tx = await self.rpc.gettransaction_verbose(txid)
            if tx is None or tx.get("blockhash"):
                continue  # mined meanwhile: the next pass reads its block
            senders = await self._senders(tx)
            found.extend(Transfer(str(a), senders, v, f"{txid}:{n}", None, 0) for n, a, v in hits)
        return found

    async def _senders(self, tx: dict[str, Any]) -> tuple[str, ...]:
        """Distinct addresses of the outputs ``tx`` spends, in input order."""
        inputs = [vin for vin in tx.get("vin", []) if vin.get("txid")]  # a coinbase input has none
        parents = await asyncio.gather(*(self.rpc.gettransaction_verbose(str(vin["txid"])) for vin in inputs))
        found: list[str] = []
        for vin, parent in zip(inputs, parents, strict=True):
            if parent is None:
                raise ChainError(f"the node cannot find transaction {vin['txid']} spent by an input (no -txindex?)")
            address = next((a for n, a, _ in self._outputs(parent) if n == int(vin["vout"])), None)
            if address is not None and address not in found:
                found.append(address)
        return tuple(found)
