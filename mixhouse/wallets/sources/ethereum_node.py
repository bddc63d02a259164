"""Address history from an Ethereum JSON-RPC node: ETH transfers and ERC-20 Transfer logs.

Blocks are read with full transactions (``eth_getBlockByNumber``); a transaction from or to a
requested address becomes an ETH row (the receipt gives its status and the fee,
``gasUsed * effectiveGasPrice``). ERC-20 movements come from ``eth_getLogs`` over the same
block range with topic0 = ``Transfer(address,address,uint256)`` (EIP-20); each log touching a
requested address becomes a row whose asset is the token contract. The checkpoint is
``"<height>:<block hash>"``; an orphaned checkpoint block makes the source step back and say so.

Not seen: ETH moved by contract internals (no trace API is assumed).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from eth_utils.address import to_checksum_address

from mixhouse.errors import ChainError, InvalidAddress
from mixhouse.wallets.records import AddressTx, HistoryPage, Leg

# keccak256("Transfer(address,address,uint256)"), EIP-20.
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
REORG_STEP_BACK = 12


def _int(value: Any) -> int:
    return int(str(value), 16)


def _topic_address(topic: str) -> str:
    return str(to_checksum_address("0x" + topic[-40:]))


class EthereumNodeSource:
    """:class:`~mixhouse.wallets.records.HistorySource` over an Ethereum node.

    Args:
        rpc_url: the node's JSON-RPC URL.
        blocks_per_page: blocks read per :meth:`fetch`.
        client: an HTTP client to use (not closed here).
    """

    chain = "ETH"
    # Blocks and Transfer logs are read whole and filtered here, so one fetch serves any
    # number of addresses (see mixhouse.wallets.sync).
    max_addresses_per_fetch = 1000

    def __init__(self, rpc_url: str, *, blocks_per_page: int = 500, client: httpx.AsyncClient | None = None) -> None:
        self._url = rpc_url
        self._per_page = blocks_per_page
        self._client = client or httpx.AsyncClient(timeout=30.0)
        self._owns_client = client is None
        self._ids = itertools.count(1)

    async def aclose(self) -> None:
        """Close the HTTP client if this source made it."""
        if self._owns_client:
            await self._client.aclose()

    async def _call(self, method: str, *params: Any) -> Any:
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

    async def fetch(self, addresses: Sequence[str], checkpoint: str | None) -> HistoryPage:
        """Read the next ``blocks_per_page`` blocks after ``checkpoint``.

        Raises:
            ChainError: the node failed.
            InvalidAddress: an address is not a valid Ethereum address.
        """
        try:
            wanted = {str(to_checksum_address(a)) for a in addresses}
        except ValueError as exc:
            raise InvalidAddress(str(exc)) from exc
        tip = _int(await self._call("eth_blockNumber"))
        start, rewound = await self._start(checkpoint)
        end = min(tip, start + self._per_page - 1)
        if start > end:
            return HistoryPage((), checkpoint, done=True, rewound_to=rewound)
        txs: list[AddressTx] = []
        times: dict[int, tuple[str, datetime]] = {}
        last = checkpoint
        for height in range(start, end + 1):
            block = await self._call("eth_getBlockByNumber", hex(height), True)
            if block is None:
                break
            when = datetime.fromtimestamp(_int(block["timestamp"]), UTC)
            times[height] = (str(block["hash"]), when)
            for tx in block.get("transactions", []):
                txs.extend(await self._eth_rows(tx, height, str(block["hash"]), when, wanted))
            last = f"{height}:{block['hash']}"
        txs.extend(await self._token_rows(start, end, times, wanted))
        return HistoryPage(tuple(txs), last, done=end >= tip, rewound_to=rewound)

    async def _start(self, checkpoint: str | None) -> tuple[int, int | None]:
        if checkpoint is None:
            return 0, None
        height_text, _, block_hash = checkpoint.partition(":")
        height = int(height_text)
        block = await self._call("eth_getBlockByNumber", hex(height), False)
        if block is not None and str(block["hash"]) == block_hash:
            return height + 1, None
        back = max(0, height - REORG_STEP_BACK)
        return back + 1, back

    async def _eth_rows(
        self, tx: dict[str, Any], height: int, block_hash: str, when: datetime, wanted: set[str]
    ) -> list[AddressTx]:
        sender = str(to_checksum_address(tx["from"]))
        receiver = None if tx.get("to") is None else str(to_checksum_address(tx["to"]))
        touched = {a for a in (sender, receiver) if a in wanted}
        if not touched:
            return []
        receipt = await self._call("eth_getTransactionReceipt", tx["hash"])
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
        logs = await self._call(
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
