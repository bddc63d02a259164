"""ERC-20 deposit watching on the scanning engine: ``Transfer`` logs of token contracts (EIP-20).

:class:`Erc20Deposits` is handed each block the engine reads on an EVM chain, the same block
(and the same request) native ETH's :class:`~mixhouse.watch.deposits.EvmDeposits` and wallet
sync take in. A block's logs are not in ``eth_getBlockByNumber``, so for each block whose
``logsBloom`` may hold a ``Transfer`` of a watched contract it asks the node for that block's
logs by its hash (``eth_getLogs`` with ``blockHash``, EIP-234): the logs are exactly those of the
block the engine has checked against its parent, whatever the chain did since, and a block
without a token transfer costs no request (bloom filter of the Yellow Paper, section 4.3.1,
``M3:2048``).

Why per block and not one ``eth_getLogs`` over the pass's range: a ranged query answers from
whatever the node's main chain is when it runs, so each log's ``blockHash`` has to be compared
with the hash the engine read at that height and a mismatch restarts the pass; by hash there
is nothing to compare. On a chain where nearly every block carries a transfer of the token
(USDT on mainnet) it is one request per block (``concurrency`` of the block reader in flight
is not used here: the logs are asked as the engine hands the block on); the figures are in
the README (benchmarks).

A deposit's ``ref`` is ``"<txid>/<n>"``, ``n`` the log's position in its transaction's receipt,
as :class:`~mixhouse.chains.evm.token.Erc20Adapter` has always recorded it: unlike the
block-wide ``logIndex`` it stays the same when a reorg re-mines the transaction in another
block, so a re-included deposit is the same deposit (and rows stored before stay
deduplicated). Logs flagged ``removed`` and transfers of value 0 are skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

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
    addresses; several tokens share the pass (and one ``eth_getLogs`` per block).

    Args:
        reader: the engine's reader (logs and receipts are asked through it).
        watched: ``{token contract: deposit addresses}``, any case.

    Attributes:
        requests: ``eth_getLogs`` requests made (the bloom skips the others): for benchmarks.
    """

    def __init__(self, reader: EvmBlocks, watched: Mapping[str, Iterable[str]]) -> None:
        self._reader = reader
        self._wanted = {contract.lower(): {a.lower() for a in addresses} for contract, addresses in watched.items()}
        self._contracts = [c for c, addresses in self._wanted.items() if addresses]
        self._contract_bits = [bloom_bits(bytes.fromhex(c.removeprefix("0x"))) for c in self._contracts]
        self._topics = sorted({_topic_address(a) for addresses in self._wanted.values() for a in addresses})
        self._found: list[Transfer] = []
        self._contract_of: dict[str, str] = {}
        self.requests = 0

    def transfers_of(self, contract: str, tip: int) -> tuple[Transfer, ...]:
        """The transfers of the token at ``contract`` found, with their confirmations at ``tip``."""
        wanted = contract.lower()
        return tuple(t for t in self.transfers(tip) if self._contract_of[t.ref] == wanted)

    async def on_block(self, block: Block) -> None:
        """Collect the block's ``Transfer`` logs of the watched tokens to a watched address.

        Raises:
            ChainError: the node failed, or a log's transaction has no receipt in this block
                (the block left the main chain while it was read: the pass fails, the next
                one sees the reorg).
        """
        if not self._contracts:
            return
        bloom = hex_int(block.data.get("logsBloom", "0x" + "ff" * 256))
        if not may_contain(bloom, _TRANSFER_BITS) or not any(may_contain(bloom, b) for b in self._contract_bits):
            return
        self.requests += 1
        logs = await self._reader.call(
            "eth_getLogs",
            {"blockHash": block.hash, "address": self._contracts, "topics": [TRANSFER_TOPIC, None, self._topics]},
        )
        hits = []
        for entry in logs or []:
            topics = [str(t).lower() for t in entry.get("topics", [])]
            contract = str(entry["address"]).lower()
            if entry.get("removed") or len(topics) != 3 or topics[0] != TRANSFER_TOPIC:
                continue
            to_address = "0x" + topics[2][-40:]
            value = int(str(entry["data"])[2:66] or "0", 16)
            if value == 0 or to_address not in self._wanted.get(contract, ()):
                continue
            hits.append((entry, topics, contract, value))
        txids = sorted({str(entry["transactionHash"]).lower() for entry, *_ in hits})
        receipts = dict(
            zip(
                txids,
                await asyncio.gather(*(self._reader.call("eth_getTransactionReceipt", t) for t in txids)),
                strict=True,
            )
        )
        for entry, topics, contract, value in hits:
            txid = str(entry["transactionHash"]).lower()
            receipt = receipts[txid]
            if receipt is None or str(receipt["blockHash"]).lower() != block.hash.lower():
                raise ChainError(f"block {block.height} left the main chain while its logs were read")
            index = hex_int(entry["logIndex"])
            position = next(n for n, log in enumerate(receipt["logs"]) if hex_int(log["logIndex"]) == index)
            ref = f"{txid}/{position}"
            self._contract_of[ref] = contract
            self._found.append(
                Transfer(
                    to_address=_address_of_topic(topics[2]),
                    from_addresses=(_address_of_topic(topics[1]),),
                    amount=value,
                    ref=ref,
                    block_number=block.height,
                    confirmations=0,
                )
            )
