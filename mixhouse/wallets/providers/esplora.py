"""Address history from an Esplora server (Blockstream's blockstream.info/api, mempool.space/api).

Endpoints (Esplora ``API.md``; amounts are integers of satoshi, lists newest first):

* ``GET /address/:address/txs``: up to 50 mempool transactions, then the first 25 confirmed.
* ``GET /address/:address/txs/chain/:last_seen_txid``: the next 25 confirmed transactions
  after ``last_seen_txid`` (a confirmed txid of the previous page).

A transaction is ``{"txid", "fee", "vin": [{"txid", "vout", "is_coinbase", "prevout":
{"scriptpubkey_address", "value", ...}}], "vout": [{"scriptpubkey_address", "value", ...}],
"status": {"confirmed", "block_height", "block_hash", "block_time"}}``. Legs are complete,
so ``net`` is computed from them.

Each :meth:`EsploraSource.fetch` makes one request for one address; several addresses are
read one after the other. The checkpoint is JSON::

    {"address": "bc1q...", "last_seen": "<txid>", "newest": "<txid>", "known": {"bc1q...": "<txid>"}}

``address``/``last_seen``: the address being read and the last confirmed txid of the page
before (``null``: start with ``/txs``); ``newest``: the newest confirmed txid of the
current walk; ``known``: per address, the newest confirmed txid of its last complete walk.
A later sync walks an address from the top again and stops at its ``known`` txid, so the
history is read once and a sync then costs a page or two (mempool transactions are on the
first page each time, and re-read until they confirm).

Known limits: ``/txs`` shows at most 50 mempool transactions; a reorg that moves
transactions below the ``known`` one is not seen (``rewound_to`` is never set), and if the
``known`` transaction itself disappears the next walk simply reads the whole history again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from mixhouse.chains.bitcoin import networks
from mixhouse.errors import ChainError
from mixhouse.wallets.providers.ratelimit import (
    RateLimiter,
    canonical_address,
    count,
    get_json,
    keep_row,
    satoshi,
    unique_legs,
)
from mixhouse.wallets.records import AddressTx, HistoryPage, Leg

PROVIDER = "esplora"
# Confirmed transactions per page of /txs and /txs/chain (a shorter page is the last one).
CHAIN_PAGE = 25


@dataclass(slots=True)
class _Cursor:
    address: str | None = None
    last_seen: str | None = None
    newest: str | None = None
    known: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def decode(checkpoint: str | None) -> _Cursor:
        if checkpoint is None:
            return _Cursor()
        try:
            data = json.loads(checkpoint)
        except ValueError as exc:
            raise ChainError(f"{PROVIDER}: unreadable checkpoint {checkpoint!r} ({exc})") from exc
        known = data.get("known", {}) if isinstance(data, dict) else None
        texts = [data.get(key) for key in ("address", "last_seen", "newest")] if isinstance(data, dict) else [0]
        if (
            not isinstance(known, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in known.items())
            or not all(value is None or isinstance(value, str) for value in texts)
        ):
            raise ChainError(f"{PROVIDER}: unreadable checkpoint {checkpoint!r}")
        return _Cursor(data.get("address"), data.get("last_seen"), data.get("newest"), dict(known))

    def encode(self) -> str:
        return json.dumps(
            {"address": self.address, "last_seen": self.last_seen, "newest": self.newest, "known": self.known},
            separators=(",", ":"),
            sort_keys=True,
        )


class EsploraSource:
    """:class:`~mixhouse.wallets.records.HistorySource` over an Esplora HTTP API.

    Args:
        base_url: the API root, e.g. ``https://blockstream.info/api`` or
            ``https://mempool.space/testnet/api``.
        client: an HTTP client to use (not closed here); by default one is made.
        limiter: the provider's rate limiter, shared by every source talking to it; by
            default 2 requests per second, burst 4.
        network: the Bitcoin network the server indexes (addresses are checked against it).
    """

    chain = "BTC"

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.AsyncClient | None = None,
        limiter: RateLimiter | None = None,
        network: str = "mainnet",
    ) -> None:
        self._base = base_url.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=30.0)
        self._owns_client = client is None
        self._limiter = limiter or RateLimiter(rate=2.0, burst=4)
        self._network = networks.get_network(network).name

    async def aclose(self) -> None:
        """Close the HTTP client if this source made it."""
        if self._owns_client:
            await self._client.aclose()

    async def fetch(self, addresses: Sequence[str], checkpoint: str | None) -> HistoryPage:
        """One page (one request, one address) of the history of ``addresses`` after
        ``checkpoint``; ``done`` once the last address is read to its end.

        Raises:
            ChainError: the API failed after retries, answered something unusable (a
                non-integer amount, a missing field), or the checkpoint is unreadable.
            InvalidAddress: an address is not valid on the source's network.
        """
        wanted = list(dict.fromkeys(networks.normalize_address(a, self._network) for a in addresses))
        if not wanted:
            return HistoryPage((), checkpoint, done=True)
        cursor = _Cursor.decode(checkpoint)
        if cursor.address not in wanted:  # a new round, or the address set changed
            cursor = _Cursor(wanted[0], None, None, cursor.known)
        address = wanted[wanted.index(str(cursor.address))]
        first_page = cursor.last_seen is None
        path = f"/address/{address}/txs" if first_page else f"/address/{address}/txs/chain/{cursor.last_seen}"
        what = f"{PROVIDER} {path}"
        body = await get_json(self._client, self._limiter, self._base + path, what)
        if not isinstance(body, list) or not all(isinstance(tx, dict) for tx in body):
            raise ChainError(f"{what}: expected a list of transactions")

        stop_at = cursor.known.get(address)
        rows: dict[str, AddressTx] = {}
        confirmed = 0
        last_confirmed: str | None = None
        reached_known = False
        for tx in body:
            row = self._row(tx, address, what)
            if row.block_height is not None:
                if row.txid == stop_at:
                    reached_known = True
                    break
                confirmed += 1
                last_confirmed = row.txid
                if cursor.newest is None:
                    cursor.newest = row.txid
            if any(leg.address == address for leg in row.inputs + row.outputs):
                keep_row(rows, row.txid, row)

        finished = reached_known or confirmed < CHAIN_PAGE or last_confirmed is None
        if not finished:
            cursor.last_seen = last_confirmed
            return HistoryPage(tuple(rows.values()), cursor.encode(), done=False)
        if cursor.newest is not None:
            cursor.known[address] = cursor.newest
        position = wanted.index(address)
        following = wanted[position + 1] if position + 1 < len(wanted) else None
        after = _Cursor(following, None, None, cursor.known)
        return HistoryPage(tuple(rows.values()), after.encode(), done=following is None)

    def _row(self, tx: dict[str, Any], address: str, what: str) -> AddressTx:
        txid = tx.get("txid")
        if not isinstance(txid, str) or len(txid) != 64:
            raise ChainError(f"{what}: a transaction has no usable txid: {txid!r}")
        what = f"{PROVIDER} tx {txid}"
        inputs = unique_legs(self._inputs(tx, what))
        outputs = unique_legs(self._outputs(tx, what))
        status = tx.get("status")
        if not isinstance(status, dict) or not isinstance(status.get("confirmed"), bool):
            raise ChainError(f"{what}: status is missing")
        height: int | None = None
        block_hash: str | None = None
        when: datetime | None = None
        if status["confirmed"]:
            height = count(status.get("block_height"), f"{what} block_height")
            raw_hash = status.get("block_hash")
            if not isinstance(raw_hash, str):
                raise ChainError(f"{what}: confirmed without a block_hash")
            block_hash = raw_hash
            when = datetime.fromtimestamp(count(status.get("block_time"), f"{what} block_time"), UTC)
        coinbase = any(isinstance(vin, dict) and vin.get("is_coinbase") is True for vin in tx.get("vin", []))
        fee: int | None
        if tx.get("fee") is not None:
            fee = satoshi(tx["fee"], f"{what} fee")
        else:
            fee = 0 if coinbase else sum(leg.amount for leg in inputs) - sum(leg.amount for leg in outputs)
        net = sum(leg.amount for leg in outputs if leg.address == address) - sum(
            leg.amount for leg in inputs if leg.address == address
        )
        return AddressTx(
            chain=self.chain,
            address=address,
            txid=txid,
            inputs=inputs,
            outputs=outputs,
            net=net,
            asset="BTC",
            fee=fee,
            block_height=height,
            block_hash=block_hash,
            block_time=when,
            extra={"provider": PROVIDER},
        )

    @staticmethod
    def _inputs(tx: dict[str, Any], what: str) -> list[Leg]:
        vins = tx.get("vin")
        if not isinstance(vins, list) or not all(isinstance(vin, dict) for vin in vins):
            raise ChainError(f"{what}: vin is not a list of inputs")
        legs = []
        for index, vin in enumerate(vins):
            if vin.get("is_coinbase") is True:
                continue
            prevout = vin.get("prevout")
            if not isinstance(prevout, dict):
                raise ChainError(f"{what}: input {index} has no prevout")
            legs.append(
                Leg(
                    index,
                    canonical_address(prevout.get("scriptpubkey_address")),
                    satoshi(prevout.get("value"), f"{what} input {index} value"),
                    "BTC",
                )
            )
        return legs

    @staticmethod
    def _outputs(tx: dict[str, Any], what: str) -> list[Leg]:
        vouts = tx.get("vout")
        if not isinstance(vouts, list) or not all(isinstance(vout, dict) for vout in vouts):
            raise ChainError(f"{what}: vout is not a list of outputs")
        return [
            Leg(
                index,
                canonical_address(vout.get("scriptpubkey_address")),
                satoshi(vout.get("value"), f"{what} output {index} value"),
                "BTC",
            )
            for index, vout in enumerate(vouts)
        ]
