"""Address history from a Bitcoin node speaking Core's JSON-RPC, by scanning blocks.

Core has no address index, so the source reads blocks through the scanning engine
(:class:`mixhouse.watch.engine.ChainWatch` over :class:`mixhouse.watch.bitcoin.BitcoinBlocks`:
``getblock <hash> 3``, transactions with their inputs' previous outputs) from the checkpoint up
to the tip and keeps what touches the requested addresses. The checkpoint is the engine's
position, ``"<height>:<block hash>"`` of the last block read; if that block is no longer in the
main chain the engine finds the fork point (its one reorg policy, ``MIXHOUSE_REORG_MAX_DEPTH``)
and the page says so (:attr:`HistoryPage.rewound_to`), so the store puts the orphaned
transactions back to unconfirmed.

Speed: a transaction is matched by comparing its outputs' and prevouts' scriptPubKey hex with
the requested addresses' scripts (one dict lookup per leg); only the transactions that match
have their legs decoded to addresses (bech32 in pure Python costs ~0.1 ms a leg, and most of a
block pays someone else). The reader requests blocks ``concurrency`` at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from mixhouse.chains.bitcoin import networks
from mixhouse.chains.bitcoin.rpc import BitcoinRpc, btc_to_sat
from mixhouse.errors import ChainError
from mixhouse.wallets.records import AddressTx, HistoryPage, Leg
from mixhouse.watch.bitcoin import BitcoinBlocks
from mixhouse.watch.engine import DEFAULT_REORG_MAX_DEPTH, Block, ChainWatch

# How far a checkpoint whose block was orphaned may rewind: the engine's policy depth.
REORG_STEP_BACK = DEFAULT_REORG_MAX_DEPTH
# The engine's consumer name of wallet sync (what a too-deep reorg stops).
CONSUMER = "wallets"
# Decoded scripts kept between pages (script hex -> address); cleared when full. A change
# address or a busy counterparty recurs across blocks, so this saves most of the decoding.
_SCRIPT_CACHE_SIZE = 100_000


class BitcoinNodeSource:
    """:class:`~mixhouse.wallets.records.HistorySource` over a node's blocks.

    Args:
        rpc: the node client.
        network: ``"mainnet"``, ``"testnet"``, ``"signet"`` or ``"regtest"``.
        blocks_per_page: blocks read per :meth:`fetch` (one page, one checkpoint).
        concurrency: blocks requested at a time (``getblockhash`` then ``getblock``), ``>= 1``.
            A few keep the node busy while this process parses; more only hold more decoded
            blocks in memory (a full mainnet block with prevouts is several MB of JSON).
        watch: the chain's scanning engine to read through (shared with the other watchers of
            the process, :func:`mixhouse.wallets.sources.configured.sources_from_settings`);
            ``None``: one of its own over ``rpc``, with the default reorg depth, in memory.

    Raises:
        ValueError: ``blocks_per_page`` or ``concurrency`` below 1.
        ConfigError: unknown ``network``.
    """

    chain = "BTC"
    # Blocks are read whole and matched against a set of scripts, so one fetch serves any
    # number of addresses (the sync engine groups addresses at the same checkpoint).
    max_addresses_per_fetch = 1000

    def __init__(
        self,
        rpc: BitcoinRpc,
        *,
        network: str,
        blocks_per_page: int = 200,
        concurrency: int = 4,
        watch: ChainWatch | None = None,
    ) -> None:
        if blocks_per_page < 1 or concurrency < 1:
            raise ValueError("blocks_per_page and concurrency must be at least 1")
        self._network = networks.get_network(network).name
        self._per_page = blocks_per_page
        self._watch = watch or ChainWatch(BitcoinBlocks(rpc, concurrency=concurrency))
        self._decoded: dict[str, str | None] = {}

    async def fetch(self, addresses: Sequence[str], checkpoint: str | None) -> HistoryPage:
        """Read the next ``blocks_per_page`` blocks after ``checkpoint``.

        The page ends early, with ``done=False``, at a block that vanished while it was read
        or that does not extend the previous one (a reorg under way): the next fetch resumes
        from the last block kept and notices the reorg there.

        Raises:
            ChainError: the node failed or lacks ``getblock`` verbosity 3 prevouts; the reorg
                was deeper than the engine's policy (:class:`~mixhouse.watch.engine.ReorgTooDeep`)
                or wallet sync is stopped by one.
            InvalidAddress: an address is not of this network.
        """
        matcher = _Matcher(self, self._wanted(addresses))
        read = await self._watch.advance(CONSUMER, checkpoint, [matcher], max_blocks=self._per_page)
        return HistoryPage(tuple(matcher.txs), read.position, done=read.done, rewound_to=read.rewound_to)

    def _wanted(self, addresses: Sequence[str]) -> dict[str, str]:
        """``{scriptPubKey hex: canonical address}`` of the requested addresses.

        Raises:
            InvalidAddress: an address is not of this network.
        """
        wanted: dict[str, str] = {}
        for text in addresses:
            address = networks.normalize_address(text, self._network)
            wanted[networks.script_pubkey(address, self._network).hex()] = address
        return wanted

    def _matches(self, block: dict[str, Any], height: int, wanted: dict[str, str]) -> list[AddressTx]:
        """Rows of the block's transactions touching ``wanted`` scripts (one per address)."""
        found: list[AddressTx] = []
        when = datetime.fromtimestamp(int(block["time"]), UTC)
        keys = wanted.keys()
        for tx in block.get("tx", []):
            vins: list[dict[str, Any]] = tx.get("vin", [])
            vouts: list[dict[str, Any]] = tx.get("vout", [])
            spent = [(index, _prevout(vin)) for index, vin in enumerate(vins) if "coinbase" not in vin]
            scripts = [o["scriptPubKey"]["hex"] for o in vouts]
            scripts += [p["scriptPubKey"]["hex"] for _, p in spent]
            # The common case, a transaction of someone else: one C-level pass, nothing built.
            if keys.isdisjoint(scripts):
                continue
            touched = {wanted[s] for s in scripts if s in wanted}
            inputs = tuple(
                Leg(i, self._address(p["scriptPubKey"], wanted), btc_to_sat(p["value"]), "BTC") for i, p in spent
            )
            outputs = tuple(
                Leg(int(o["n"]), self._address(o["scriptPubKey"], wanted), btc_to_sat(o["value"]), "BTC") for o in vouts
            )
            coinbase = len(spent) < len(vins)
            fee = None if coinbase else sum(leg.amount for leg in inputs) - sum(leg.amount for leg in outputs)
            for address in sorted(touched):
                received = sum(leg.amount for leg in outputs if leg.address == address)
                paid = sum(leg.amount for leg in inputs if leg.address == address)
                found.append(
                    AddressTx(
                        chain=self.chain,
                        address=address,
                        txid=str(tx["txid"]),
                        inputs=inputs,
                        outputs=outputs,
                        net=received - paid,
                        asset="BTC",
                        fee=fee,
                        block_height=height,
                        block_hash=str(block["hash"]),
                        block_time=when,
                    )
                )
        return found

    def _address(self, script_pubkey: dict[str, Any], wanted: dict[str, str]) -> str | None:
        """The address of a scriptPubKey object (``None`` for non-standard scripts), cached."""
        hex_script = _hex(script_pubkey)
        known = wanted.get(hex_script)
        if known is not None:
            return known
        if hex_script in self._decoded:
            return self._decoded[hex_script]
        if len(self._decoded) >= _SCRIPT_CACHE_SIZE:
            self._decoded.clear()
        address = networks.address_of_script(bytes.fromhex(hex_script), self._network)
        self._decoded[hex_script] = address
        return address


class _Matcher:
    """The engine's watcher of one fetch: the rows of each block touching ``wanted``."""

    def __init__(self, source: BitcoinNodeSource, wanted: dict[str, str]) -> None:
        self._source = source
        self._wanted = wanted
        self.txs: list[AddressTx] = []

    async def on_block(self, block: Block) -> None:
        self.txs.extend(self._source._matches(block.data, block.height, self._wanted))


def _hex(script_pubkey: dict[str, Any]) -> str:
    return str(script_pubkey["hex"])


def _prevout(vin: dict[str, Any]) -> dict[str, Any]:
    """The input's previous output (``value`` BTC, ``scriptPubKey``).

    Raises:
        ChainError: the node gave none (``getblock`` verbosity 3 needs Core >= 23).
    """
    prevout = vin.get("prevout")
    if not isinstance(prevout, dict):
        raise ChainError("the node gives no input prevouts (getblock verbosity 3 needs Core >= 23)")
    return prevout
