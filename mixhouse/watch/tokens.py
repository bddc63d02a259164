"""ERC-20 deposit watching on the scanning engine: ``Transfer`` logs of token contracts (EIP-20).

:class:`Erc20Deposits` is handed each block the engine reads on an EVM chain, the same block
(and the same request) native ETH's :class:`~mixhouse.watch.deposits.EvmDeposits` and wallet
sync take in. A block's logs are not in ``eth_getBlockByNumber``: the watcher notes the blocks
whose ``logsBloom`` may hold a ``Transfer`` of a watched contract (bloom filter of the Yellow
Paper, section 4.3.1, ``M3:2048``; a block without one costs nothing), and after the pass
(:meth:`Erc20Deposits.settle`) asks for their logs in **one** ``eth_getLogs`` over the range
of those blocks, to the watched addresses. That answer comes from whatever the node's main
chain is when it runs, so it is checked against the blocks the engine read: every log's
``blockHash`` must be the hash the engine took in at that height, and the hash at the top of the
range is read again after the query (a chain that changed under it changes there, since the
engine checked every block's parent). Where either check fails, the logs are asked block by
block by hash (``eth_getLogs`` with ``blockHash``, EIP-234), which can only answer for the
block the engine read.

Measured on anvil (200 blocks, an ad hoc run on a shared CPU): with a watched token transfer
in every block the pass took 574 ms with one ``eth_getLogs`` by hash per block and 444 ms with
the one ranged query (the blocks alone: 211 ms; the rest is the 200 receipts); with one block
in ten, 249 ms and 238 ms. On a hosted node each request is a round trip of tens of ms, and on
mainnet USDT is in every block's bloom: the ranged query is one request per pass instead of
one per block. Receipts are asked only for the transactions of matching logs (for ``n``).

A deposit's ``ref`` is ``"<txid>/<n>"``, ``n`` the log's position in its transaction's receipt,
as :class:`~mixhouse.chains.evm.token.Erc20Adapter` has always recorded it: unlike the
block-wide ``logIndex`` it stays the same when a reorg re-mines the transaction in another
block, so a re-included deposit is the same deposit (and rows stored before stay
deduplicated). Logs flagged ``removed`` and transfers of value 0 are skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import cast

from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from mixhouse.chains.base import Transfer
from mixhouse.chains.evm.token import TRANSFER_TOPIC
from mixhouse.errors import ChainError
from mixhouse.watch.deposits import Deposits
from mixhouse.watch.engine import Block
from mixhouse.watch.evm import EvmBlocks, hex_int


def bloom_bits(item: bytes) -> tuple[int, int, int]:
    """The three bits ``item`` sets in a 2048-bit log bloom (Yellow Paper ``M3:2048``): the
    low 11 bits of each of the first three byte pairs of ``keccak256(item)``."""
    digest = keccak(item)
    return (
        ((digest[0] << 8) | digest[1]) & 2047,
        ((digest[2] << 8) | digest[3]) & 2047,
        ((digest[4] << 8) | digest[5]) & 2047,
    )


def may_contain(bloom: int, bits: tuple[int, int, int]) -> bool:
    """Whether a bloom (the block's ``logsBloom`` as a big-endian integer) has all ``bits``."""
    return all((bloom >> bit) & 1 for bit in bits)


def _topic_address(address: str) -> str:
    return "0x" + "00" * 12 + address.lower().removeprefix("0x")


def _address_of_topic(topic: str) -> str:
    return str(to_checksum_address("0x" + topic[-40:]))


_TRANSFER_BITS = bloom_bits(bytes.fromhex(TRANSFER_TOPIC.removeprefix("0x")))


class Erc20Deposits(Deposits):
    """:class:`~mixhouse.watch.engine.Watcher` of ``Transfer`` logs of token contracts to watched
    addresses; several tokens share the pass and its ``eth_getLogs``.

    Call :meth:`settle` after the pass, before :meth:`transfers`: the logs are read then.

    Args:
        reader: the engine's reader (logs and receipts are asked through it).
        watched: ``{token contract: deposit addresses}``, any case.

    Attributes:
        requests: ``eth_getLogs`` requests made: for tests and benchmarks.
    """

    def __init__(self, reader: EvmBlocks, watched: Mapping[str, Iterable[str]]) -> None:
        self._reader = reader
        self._wanted = {contract.lower(): {a.lower() for a in addresses} for contract, addresses in watched.items()}
        self._contracts = [c for c, addresses in self._wanted.items() if addresses]
        self._contract_bits = [bloom_bits(bytes.fromhex(c.removeprefix("0x"))) for c in self._contracts]
        self._topics = sorted({_topic_address(a) for addresses in self._wanted.values() for a in addresses})
        self._found: list[Transfer] = []
        self._contract_of: dict[str, str] = {}
        self._pending: dict[int, str] = {}  # height -> hash of the blocks whose logs to read
        self.requests = 0

    def transfers_of(self, contract: str, tip: int) -> tuple[Transfer, ...]:
        """The transfers of the token at ``contract`` found, with their confirmations at ``tip``."""
        wanted = contract.lower()
        return tuple(t for t in self.transfers(tip) if self._contract_of[t.ref] == wanted)

    def transfers(self, tip: int) -> tuple[Transfer, ...]:
        """The transfers found, with their confirmations at ``tip``.

        Raises:
            RuntimeError: blocks taken in are not settled yet (:meth:`settle`).
        """
        if self._pending:
            raise RuntimeError("Erc20Deposits.settle() must run after the pass")
        return super().transfers(tip)

    async def on_block(self, block: Block) -> None:
        """Note ``block`` if its bloom may hold a ``Transfer`` of a watched token."""
        if not self._contracts:
            return
        bloom = hex_int(block.data.get("logsBloom", "0x" + "ff" * 256))
        if may_contain(bloom, _TRANSFER_BITS) and any(may_contain(bloom, b) for b in self._contract_bits):
            self._pending[block.height] = block.hash.lower()

    async def settle(self) -> None:
        """Read the logs of the blocks noted in the pass (see the module) and collect the
        deposits they hold.

        Raises:
            ChainError: the node failed, or a log's transaction has no receipt in the block the
                engine read (it left the main chain meanwhile: the next pass sees the reorg).
        """
        pending, self._pending = self._pending, {}
        if not pending:
            return
        low, high = min(pending), max(pending)
        self.requests += 1
        logs = await self._reader.call(
            "eth_getLogs",
            {"fromBlock": hex(low), "toBlock": hex(high), "address": self._contracts, "topics": self._query_topics()},
        )
        entries = [e for e in logs or [] if hex_int(e["blockNumber"]) in pending]
        consistent = all(str(e["blockHash"]).lower() == pending[hex_int(e["blockNumber"])] for e in entries)
        if consistent:
            consistent = str(await self._reader.hash_at(high)).lower() == pending[high]
        if not consistent:
            entries = []
            for _, block_hash in sorted(pending.items()):
                self.requests += 1
                entries.extend(
                    await self._reader.call(
                        "eth_getLogs",
                        {"blockHash": block_hash, "address": self._contracts, "topics": self._query_topics()},
                    )
                    or []
                )
        await self._collect(entries, pending)

    def _query_topics(self) -> list[object]:
        return [TRANSFER_TOPIC, None, self._topics]

    async def _collect(self, entries: list[dict[str, object]], pending: dict[int, str]) -> None:
        hits = []
        for entry in entries:
            topics = [str(t).lower() for t in cast(list[object], entry.get("topics", []))]
            contract = str(entry["address"]).lower()
            if entry.get("removed") or len(topics) != 3 or topics[0] != TRANSFER_TOPIC:
                continue
            to_address = "0x" + topics[2][-40:]
            value = int(str(entry["data"])[2:66] or "0", 16)
            if value == 0 or to_address not in self._wanted.get(contract, ()):
                continue
            hits.append((entry, topics, value))
        txids = sorted({str(entry["transactionHash"]).lower() for entry, *_ in hits})
        receipts = dict(
            zip(
                txids,
                await asyncio.gather(*(self._reader.call("eth_getTransactionReceipt", t) for t in txids)),
                strict=True,
            )
        )
        for entry, topics, value in sorted(
            hits, key=lambda h: (hex_int(h[0]["blockNumber"]), hex_int(h[0]["logIndex"]))
        ):
            txid = str(entry["transactionHash"]).lower()
            height = hex_int(entry["blockNumber"])
            receipt = receipts[txid]
            if receipt is None or str(receipt["blockHash"]).lower() != pending[height]:
                raise ChainError(f"block {height} left the main chain while its logs were read")
            index = hex_int(entry["logIndex"])
            position = next(n for n, log in enumerate(receipt["logs"]) if hex_int(log["logIndex"]) == index)
            ref = f"{txid}/{position}"
            self._contract_of[ref] = str(entry["address"]).lower()
            self._found.append(
                Transfer(
                    to_address=_address_of_topic(topics[2]),
                    from_addresses=(_address_of_topic(topics[1]),),
                    amount=value,
                    ref=ref,
                    block_number=height,
                    confirmations=0,
                )
            )
