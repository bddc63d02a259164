"""Deposit watching on the scanning engine: the transfers to watched addresses in each block.

:class:`BitcoinDeposits` is the watcher of the mixer's Bitcoin deposit and pool addresses: every
output paying one is a :class:`~mixhouse.chains.base.Transfer` (``ref`` ``"<txid>:<vout>"``, the
senders from the inputs' prevouts, as the Bitcoin adapter's own scan recorded it before).

:class:`EvmDeposits` is the engine's watcher of the mixer's ETH deposit addresses: a transaction
of value to one of them with receipt status 1 (EIP-658) is a :class:`~mixhouse.chains.base.Transfer`
(``ref`` the lowercase txid), as the ETH adapter's own scan recorded it before. It reads the block the
engine reads for every other watcher of the pass (wallet sync included) and asks the node only for
the receipts of the transactions that match.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from eth_utils.address import to_checksum_address

from mixhouse.chains.base import Transfer
from mixhouse.chains.bitcoin import networks
from mixhouse.chains.bitcoin.rpc import btc_to_sat
from mixhouse.errors import ChainError
from mixhouse.watch.engine import Block
from mixhouse.watch.evm import EvmBlocks, hex_int


class Deposits:
    """What a deposit watcher found in a pass (the base of the deposit watchers)."""

    _found: list[Transfer]

    def transfers(self, tip: int) -> tuple[Transfer, ...]:
        """The transfers found, with their confirmations at ``tip`` (``tip - block + 1``)."""
        return tuple(
            Transfer(t.to_address, t.from_addresses, t.amount, t.ref, t.block_number, tip - (t.block_number or tip) + 1)
            for t in self._found
        )


class EvmDeposits(Deposits):
    """:class:`~mixhouse.watch.engine.Watcher` of ETH transfers to ``watched`` addresses.

    Args:
        reader: the engine's reader (receipts are asked through it).
        watched: the deposit addresses, any case.
    """

    def __init__(self, reader: EvmBlocks, watched: Iterable[str]) -> None:
        self._reader = reader
        self._wanted = {address.lower() for address in watched}
        self._found: list[Transfer] = []

    async def on_block(self, block: Block) -> None:
        """Collect the block's successful value transfers to a watched address.

        Raises:
            ChainError: the node failed.
        """
        hits = [
            tx
            for tx in block.data.get("transactions", [])
            if tx.get("to") is not None and str(tx["to"]).lower() in self._wanted and hex_int(tx["value"]) > 0
        ]
        receipts = await asyncio.gather(*(self._reader.call("eth_getTransactionReceipt", tx["hash"]) for tx in hits))
        for tx, receipt in zip(hits, receipts, strict=True):
            if receipt is None or hex_int(receipt["status"]) != 1:
                continue  # reverted (or gone already: the next pass sees the reorg)
            self._found.append(
                Transfer(
                    to_address=str(to_checksum_address(tx["to"])),
                    from_addresses=(str(to_checksum_address(tx["from"])),),
                    amount=hex_int(tx["value"]),
                    ref=str(tx["hash"]).lower(),
                    block_number=block.height,
                    confirmations=0,
                )
            )


class BitcoinDeposits(Deposits):
    """:class:`~mixhouse.watch.engine.Watcher` of outputs paying ``watched`` addresses.

    Args:
        network: the Bitcoin network's name (``"regtest"``...).
        watched: canonical addresses (as :meth:`BitcoinAdapter.normalize_address` gives them).
    """

    def __init__(self, network: str, watched: Iterable[str]) -> None:
        self._network = network
        self._wanted = set(watched)
        self._found: list[Transfer] = []

    def _address(self, script_pubkey: dict[str, object]) -> str | None:
        return networks.address_of_script(bytes.fromhex(str(script_pubkey["hex"])), self._network)

    async def on_block(self, block: Block) -> None:
        """Collect the block's outputs paying a watched address.

        Raises:
            ChainError: a transaction without input prevouts (``getblock`` verbosity 3 needs
                Core >= 23) or with an unreadable output.
        """
        for tx in block.data.get("tx", []):
            try:
                paid = [(int(o["n"]), self._address(o["scriptPubKey"]), btc_to_sat(o["value"])) for o in tx["vout"]]
            except (KeyError, TypeError, ValueError) as exc:
                raise ChainError(f"transaction {tx.get('txid')} has an unreadable output") from exc
            hits = [(n, address, value) for n, address, value in paid if address in self._wanted and value > 0]
            if not hits:
                continue
            senders: list[str] = []
            for vin in tx.get("vin", []):
                if not vin.get("txid"):
                    continue  # a coinbase input
                prevout = vin.get("prevout")
                if not isinstance(prevout, dict):
                    raise ChainError("the node gives no input prevouts (getblock verbosity 3 needs Core >= 23)")
                sender = self._address(prevout["scriptPubKey"])
                if sender is not None and sender not in senders:
                    senders.append(sender)
            self._found.extend(
                Transfer(str(address), tuple(senders), value, f"{tx['txid']}:{n}", block.height, 0)
                for n, address, value in hits
            )
