"""Address history from an Ethereum JSON-RPC node: ETH transfers and ERC-20 Transfer logs.

Blocks are read through the scanning engine (:class:`mixhouse.watch.engine.ChainWatch` over
:class:`mixhouse.watch.evm.EvmBlocks`: ``eth_getBlockByNumber`` with full transactions); a
transaction from or to a requested address becomes an ETH row (the receipt gives its status and the fee,
``gasUsed * effectiveGasPrice``). ERC-20 movements come from ``eth_getLogs`` over the same
block range with topic0 = ``Transfer(address,address,uint256)`` (EIP-20); each log touching a
requested address becomes a row whose asset is the token contract. The checkpoint is the
engine's position ``"<height>:<block hash>"``; an orphaned checkpoint block makes the engine
rewind to the fork point (its one reorg policy, ``MIXHOUSE_REORG_MAX_DEPTH``) and the page say so.

Not seen: ETH moved by contract internals (no trace API is assumed).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from eth_utils.address import to_checksum_address

from mixhouse.errors import InvalidAddress
from mixhouse.wallets.records import AddressTx, HistoryPage, Leg
from mixhouse.watch.engine import Block, ChainWatch
from mixhouse.watch.evm import EvmBlocks, hex_int

# keccak256("Transfer(address,address,uint256)"), EIP-20.
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
# The engine's consumer name of wallet sync (what a too-deep reorg stops).
CONSUMER = "wallets"
_int = hex_int


def _topic_address(topic: str) -> str:
    return str(to_checksum_address("0x" + topic[-40:]))


class EthereumNodeSource:
    """:class:`~mixhouse.wallets.records.HistorySource` over an Ethereum node.

    Args:
        rpc_url: the node's JSON-RPC URL.
        blocks_per_page: blocks read per :meth:`fetch`.
        client: an HTTP client to use (not closed here).
        watch: the chain's scanning engine to read through (shared with the other watchers of
            the process); ``None``: one of its own over ``rpc_url``, default reorg depth, in memory.
    """

    chain = "ETH"
    # Blocks and Transfer logs are read whole and filtered here, so one fetch serves any
    # number of addresses (see mixhouse.wallets.sync).
    max_addresses_per_fetch = 1000

    def __init__(
        self,
        rpc_url: str,
        *,
        blocks_per_page: int = 500,
        client: httpx.AsyncClient | None = None,
        watch: ChainWatch | None = None,
    ) -> None:
        self._per_page = blocks_per_page
        self._owned: EvmBlocks | None = None
        if watch is None:
            self._owned = EvmBlocks(rpc_url, client=client)
            watch = ChainWatch(self._owned)
        self._watch = watch
        reader = self._watch.reader
        if not isinstance(reader, EvmBlocks):
            raise TypeError("an EthereumNodeSource reads through an EvmBlocks engine")
        self._reader = reader

    async def aclose(self) -> None:
        """Close the HTTP client if this source made it."""
        if self._owned is not None:
            await self._owned.aclose()

    async def fetch(self, addresses: Sequence[str], checkpoint: str | None) -> HistoryPage:
        """Read the next ``blocks_per_page`` blocks after ``checkpoint``.

        Raises:
            ChainError: the node failed; the reorg was deeper than the engine's policy, or
                wallet sync is stopped by one.
            InvalidAddress: an address is not a valid Ethereum address.
        """
        try:
            wanted = {str(to_checksum_address(a)) for a in addresses}
        except ValueError as exc:
            raise InvalidAddress(str(exc)) from exc
        matcher = _Matcher(self, wanted)
        read = await self._watch.advance(CONSUMER, checkpoint, [matcher], max_blocks=self._per_page)
        txs = matcher.txs
        if read.last_height >= read.start:
            txs.extend(await self._token_rows(read.start, read.last_height, matcher.times, wanted))
        return HistoryPage(tuple(txs), read.position, done=read.done, rewound_to=read.rewound_to)

    async def _eth_rows(
        self, tx: dict[str, Any], height: int, block_hash: str, when: datetime, wanted: set[str]
    ) -> list[AddressTx]:
        sender = str(to_checksum_address(tx["from"]))
        receiver = None if tx.get("to") is None else str(to_checksum_address(tx["to"]))
        touched = {a for a in (sender, receiver) if a in wanted}
        if not touched:
            return []
        receipt = await self._reader.call("eth_getTransactionReceipt", tx["hash"])
        ok = receipt is not None and _int(receipt["status"]) == 1
        fee = _int(receipt["gasUsed"]) * _int(receipt.get("effectiveGasPrice") or tx["gasPrice"]) if receipt else None
        value = _int(tx["value"]) if ok else 0
        rows = []
        for address in sorted(touched):
            net = (value if address == receiver else 0) - (value + (fee or 0) if address == sender else 0)
            rows.append(
                AddressTx(
                    chain=self.chain,
                    address=address,
                    txid=str(tx["hash"]).lower(),
                    inputs=(Leg(0, sender, value, "ETH"),),
                    outputs=(Leg(0, receiver, value, "ETH"),),
                    net=net,
                    asset="ETH",
                    fee=fee,
                    block_height=height,
                    block_hash=block_hash,
                    block_time=when,
                    extra={"status": "ok" if ok else "reverted"},
                )
            )
        return rows

    async def _token_rows(
        self, start: int, end: int, times: dict[int, tuple[str, datetime]], wanted: set[str]
    ) -> list[AddressTx]:
        logs = await self._reader.call(
            "eth_getLogs", {"fromBlock": hex(start), "toBlock": hex(end), "topics": [TRANSFER_TOPIC]}
        )
        rows: list[AddressTx] = []
        for log in logs or []:
            topics = log.get("topics", [])
            if len(topics) != 3 or log.get("removed"):
                continue  # ERC-721 Transfer has 4 topics; removed logs belong to orphaned blocks
            frm, to = _topic_address(topics[1]), _topic_address(topics[2])
            touched = {a for a in (frm, to) if a in wanted}
            if not touched:
                continue
            token = str(to_checksum_address(log["address"]))
            amount = _int(log["data"]) if log.get("data") not in (None, "0x") else 0
            height = _int(log["blockNumber"])
            block_hash, when = times.get(height, (str(log["blockHash"]), datetime.now(UTC)))
            index = _int(log["logIndex"])
            rows.extend(
                AddressTx(
                    chain=self.chain,
                    address=address,
                    txid=str(log["transactionHash"]).lower(),
                    inputs=(Leg(index, frm, amount, token),),
                    outputs=(Leg(index, to, amount, token),),
                    net=(amount if address == to else 0) - (amount if address == frm else 0),
                    asset=token,
                    fee=None,
                    block_height=height,
                    block_hash=block_hash,
                    block_time=when,
                )
                for address in sorted(touched)
            )
        return rows


class _Matcher:
    """The engine's watcher of one fetch: ETH rows of each block touching ``wanted``, and the
    blocks' hashes and times (for the Transfer logs read after the pass)."""

    def __init__(self, source: EthereumNodeSource, wanted: set[str]) -> None:
        self._source = source
        self._wanted = wanted
        self.txs: list[AddressTx] = []
        self.times: dict[int, tuple[str, datetime]] = {}

    async def on_block(self, block: Block) -> None:
        when = datetime.fromtimestamp(_int(block.data["timestamp"]), UTC)
        self.times[block.height] = (block.hash, when)
        for tx in block.data.get("transactions", []):
            self.txs.extend(await self._source._eth_rows(tx, block.height, block.hash, when, self._wanted))
