"""Address history from a Bitcoin node speaking Core's JSON-RPC, by scanning blocks.

Core has no address index, so the source reads blocks (``getblock <hash> 3``: transactions with
their inputs' previous outputs) from the checkpoint up to the tip and keeps what touches the
requested addresses. The checkpoint is ``"<height>:<block hash>"`` of the last block read; if
that block is no longer in the main chain the source steps back and says so
(:attr:`HistoryPage.rewound_to`), so the store puts the orphaned transactions back to
unconfirmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from mixhouse.chains.bitcoin import networks
from mixhouse.chains.bitcoin.rpc import BitcoinRpc, btc_to_sat
from mixhouse.errors import ChainError
from mixhouse.wallets.records import AddressTx, HistoryPage, Leg

REORG_STEP_BACK = 6


class BitcoinNodeSource:
    """:class:`~mixhouse.wallets.records.HistorySource` over a node's blocks.

    Args:
        rpc: the node client.
        network: ``"mainnet"``, ``"testnet"``, ``"signet"`` or ``"regtest"``.
        blocks_per_page: blocks read per :meth:`fetch` (one page, one checkpoint).
    """

    chain = "BTC"

    def __init__(self, rpc: BitcoinRpc, *, network: str, blocks_per_page: int = 200) -> None:
        self._rpc = rpc
        self._network = networks.get_network(network).name
        self._per_page = blocks_per_page

    async def fetch(self, addresses: Sequence[str], checkpoint: str | None) -> HistoryPage:
        """Read the next ``blocks_per_page`` blocks after ``checkpoint``.

        Raises:
            ChainError: the node failed or lacks ``getblock`` verbosity 3 prevouts.
            InvalidAddress: an address is not of this network.
        """
        wanted = {networks.normalize_address(a, self._network) for a in addresses}
        tip = await self._rpc.getblockcount()
        start, rewound = await self._start(checkpoint)
        end = min(tip, start + self._per_page - 1)
        txs: list[AddressTx] = []
        last = checkpoint if rewound is None else f"{start - 1}:{await self._rpc.getblockhash(start - 1)}"
        for height in range(start, end + 1):
            block_hash = await self._rpc.getblockhash(height)
            if block_hash is None:
                break
            block = await self._rpc.getblock_verbose(block_hash)
            if block is None:
                break
            txs.extend(self._matches(block, height, wanted))
            last = f"{height}:{block_hash}"
        return HistoryPage(tuple(txs), last, done=end >= tip, rewound_to=rewound)

    async def _start(self, checkpoint: str | None) -> tuple[int, int | None]:
        """First height to read, and the height rewound to if the checkpoint block was orphaned."""
        if checkpoint is None:
            return 0, None
        height_text, _, block_hash = checkpoint.partition(":")
        height = int(height_text)
        if await self._rpc.getblockhash(height) == block_hash:
            return height + 1, None
        back = max(0, height - REORG_STEP_BACK)
        return back + 1, back

    def _matches(self, block: dict[str, Any], height: int, wanted: set[str]) -> list[AddressTx]:
        found: list[AddressTx] = []
        when = datetime.fromtimestamp(int(block["time"]), UTC)
        for tx in block.get("tx", []):
            inputs = tuple(self._inputs(tx))
            outputs = tuple(self._outputs(tx))
            touched = {leg.address for leg in inputs + outputs if leg.address in wanted}
            if not touched:
                continue
            coinbase = any("coinbase" in vin for vin in tx.get("vin", []))
            fee = None if coinbase else sum(leg.amount for leg in inputs) - sum(leg.amount for leg in outputs)
            for address in sorted(a for a in touched if a is not None):
                received = sum(leg.amount for leg in outputs if leg.address == address)
                spent = sum(leg.amount for leg in inputs if leg.address == address)
                found.append(
                    AddressTx(
                        chain=self.chain,
                        address=address,
                        txid=str(tx["txid"]),
                        inputs=inputs,
                        outputs=outputs,
                        net=received - spent,
                        asset="BTC",
                        fee=fee,
                        block_height=height,
                        block_hash=str(block["hash"]),
                        block_time=when,
                    )
                )
        return found

    def _inputs(self, tx: dict[str, Any]) -> list[Leg]:
        legs: list[Leg] = []
        for index, vin in enumerate(tx.get("vin", [])):
            if "coinbase" in vin:
                continue
            prevout = vin.get("prevout")
            if not isinstance(prevout, dict):
                raise ChainError("the node gives no input prevouts (getblock verbosity 3 needs Core >= 23)")
            legs.append(Leg(index, self._address(prevout["scriptPubKey"]), btc_to_sat(prevout["value"]), "BTC"))
        return legs

    def _outputs(self, tx: dict[str, Any]) -> list[Leg]:
        return [
            Leg(int(vout["n"]), self._address(vout["scriptPubKey"]), btc_to_sat(vout["value"]), "BTC")
            for vout in tx.get("vout", [])
        ]

    def _address(self, script_pubkey: dict[str, Any]) -> str | None:
        return networks.address_of_script(bytes.fromhex(str(script_pubkey["hex"])), self._network)
