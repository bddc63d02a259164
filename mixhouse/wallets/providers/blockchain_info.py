"""Address history from the blockchain.info (blockchain.com) Data API.

Endpoints (amounts are integers of satoshi, lists are newest first, unconfirmed first):

* ``GET /rawaddr/<address>?limit=50&offset=N`` for one address: ``{"address", "n_tx",
  "total_received", "total_sent", "final_balance", "txs": [...]}``; 50 transactions at most
  per page.
* ``GET /multiaddr?active=A|B|C&n=50&offset=N`` for several: ``{"addresses": [...],
  "wallet": {"n_tx", ...}, "txs": [...], "info": {...}}``. A transaction lists all its
  inputs but only the outputs that pay one of the ``active`` addresses, so legs may be
  partial; they are passed on as they are (the store merges copies) and never invented.

A transaction is ``{"hash", "fee", "time", "block_height" (null when unconfirmed),
"result", "inputs": [{"index", "prev_out": {"addr", "value", "n"}}], "out": [{"addr",
"value", "n"}]}``. ``result`` is the transaction's effect on the queried address (on the
queried set for multiaddr) and is used as ``net`` when one requested address is touched;
otherwise ``net`` is computed from the legs (the outputs paying requested addresses are
always present). The API gives no block hash in these replies: ``block_hash`` is ``None``
and ``block_time`` is the transaction's ``time`` (when blockchain.info first saw it, within
minutes of the block's time).

Pagination and checkpoints. Each :meth:`BlockchainInfoSource.fetch` makes one request and
returns one page. The checkpoint is a small JSON object:

* mid-walk ``{"offset": 50, "stop": null, "n_tx": 120, "pending": 0}``: the next offset, where
  to stop (``null``: at the end), ``n_tx`` when the walk began and the unconfirmed
  transactions seen so far;
* finished ``{"n_tx": 120, "pending": 1}``: the next sync walks again from offset 0 but stops
  after the ``new n_tx - 120`` new transactions plus the ``pending`` ones that were
  unconfirmed last time (they sit at the head of the list and may have confirmed since), so a
  long history is read once and later syncs cost a page or two.

New transactions arriving during a walk shift the list down: a transaction is then seen
twice (the store dedupes), never skipped. Known limit: offset paging cannot see a reorg
below the head of the list; :attr:`HistoryPage.rewound_to` is never set by this source.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from mixhouse.chains.bitcoin import networks
from mixhouse.errors import ChainError
from mixhouse.wallets.providers.ratelimit import (
    MAX_MONEY,
    RateLimiter,
    canonical_address,
    count,
    get_json,
    is_count,
    keep_row,
    satoshi,
    unique_legs,
)
from mixhouse.wallets.records import AddressTx, HistoryPage, Leg

PROVIDER = "blockchain.info"
# rawaddr's largest ``limit`` (multiaddr allows ``n`` up to 100; one page size serves both).
MAX_PAGE_SIZE = 50


@dataclass(frozen=True, slots=True)
class _Cursor:
    """Where a walk over the newest-first list stands (see the module docstring)."""

    offset: int | None  # None: the last walk finished
    stop: int | None
    n_tx: int | None
    pending: int

    @staticmethod
    def decode(checkpoint: str | None) -> _Cursor:
        if checkpoint is None:
            return _Cursor(offset=0, stop=None, n_tx=None, pending=0)
        data = _checkpoint_object(checkpoint)
        n_tx = data.get("n_tx")
        pending = data.get("pending", 0)
        offset = data.get("offset")
        stop = data.get("stop")
        if not (is_count(n_tx) and is_count(pending)) or any(v is not None and not is_count(v) for v in (offset, stop)):
            raise ChainError(f"{PROVIDER}: unreadable checkpoint {checkpoint!r} (counts expected)")
        return _Cursor(offset=offset, stop=stop, n_tx=n_tx, pending=pending)

    def encode(self) -> str:
        data: dict[str, int | None] = {"n_tx": self.n_tx, "pending": self.pending}
        if self.offset is not None:
            data = {"offset": self.offset, "stop": self.stop, **data}
        return json.dumps(data, separators=(",", ":"))


def _checkpoint_object(checkpoint: str) -> dict[str, Any]:
    try:
        data = json.loads(checkpoint)
    except ValueError as exc:
        raise ChainError(f"{PROVIDER}: unreadable checkpoint {checkpoint!r} ({exc})") from exc
    if not isinstance(data, dict):
        raise ChainError(f"{PROVIDER}: unreadable checkpoint {checkpoint!r} (not an object)")
    return data


class BlockchainInfoSource:
    """:class:`~mixhouse.wallets.records.HistorySource` over the blockchain.info Data API
    (Bitcoin mainnet).

    Args:
        base_url: the API root.
        client: an HTTP client to use (not closed here); by default one is made.
        limiter: the provider's rate limiter, shared by every source talking to it; by
            default a conservative 1 request per 5 s, burst 2 (blockchain.com does not
            publish the Data API's per-IP limit and answers 429 above it).
        page_size: transactions per request, ``1..50``.

    Raises:
        ValueError: ``page_size`` outside ``1..50``.
    """

    chain = "BTC"

    def __init__(
        self,
        base_url: str = "https://blockchain.info",
        *,
        client: httpx.AsyncClient | None = None,
        limiter: RateLimiter | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be within 1..{MAX_PAGE_SIZE}")
        self._base = base_url.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=30.0)
        self._owns_client = client is None
        self._limiter = limiter or RateLimiter(rate=0.2, burst=2)
        self._page_size = page_size

    async def aclose(self) -> None:
        """Close the HTTP client if this source made it."""
        if self._owns_client:
            await self._client.aclose()

    async def fetch(self, addresses: Sequence[str], checkpoint: str | None) -> HistoryPage:
        """One page (one request) of the history of ``addresses`` after ``checkpoint``.

        One address is read with ``rawaddr``, several with ``multiaddr`` (the checkpoint then
        belongs to that set of addresses). A transaction touching several requested addresses
        gives one row per address.

        Raises:
            ChainError: the API failed after retries, answered something unusable (a
                non-integer amount, a missing field), or the checkpoint is unreadable.
            InvalidAddress: an address is not a valid mainnet address.
        """
        wanted = list(dict.fromkeys(networks.normalize_address(a, "mainnet") for a in addresses))
        if not wanted:
            return HistoryPage((), checkpoint, done=True)
        cursor = _Cursor.decode(checkpoint)
        offset = 0 if cursor.offset is None else cursor.offset
        n_tx, txs, partial = await self._page(wanted, offset)
        if cursor.offset is None or cursor.n_tx is None:
            # A new walk: a full one the first time, else down to what is new or was pending.
            walk_n_tx = n_tx
            stop = None if cursor.n_tx is None else max(0, n_tx - cursor.n_tx) + cursor.pending
            pending = 0
        else:
            walk_n_tx, stop, pending = cursor.n_tx, cursor.stop, cursor.pending
        rows: dict[tuple[str, str], AddressTx] = {}
        for tx in txs:
            for row in self._rows(tx, wanted, partial):
                keep_row(rows, (row.txid, row.address), row)
            if tx.get("block_height") is None:
                pending += 1
        after = offset + len(txs)
        # Arrivals since the walk began push the region still to read further down.
        shifted_stop = None if stop is None else stop + max(0, n_tx - walk_n_tx)
        finished = len(txs) < self._page_size or after >= n_tx or (shifted_stop is not None and after >= shifted_stop)
        if finished:
            next_cursor = _Cursor(offset=None, stop=None, n_tx=walk_n_tx, pending=pending)
        else:
            next_cursor = _Cursor(offset=after, stop=stop, n_tx=walk_n_tx, pending=pending)
        return HistoryPage(tuple(rows.values()), next_cursor.encode(), done=finished)

    async def _page(self, wanted: list[str], offset: int) -> tuple[int, list[dict[str, Any]], bool]:
        """``(n_tx, txs, outputs_may_be_partial)`` of one request."""
        if len(wanted) == 1:
            what = f"{PROVIDER} rawaddr {wanted[0]} offset {offset}"
            body = await get_json(
                self._client,
                self._limiter,
                f"{self._base}/rawaddr/{wanted[0]}",
                what,
                {"limit": self._page_size, "offset": offset},
            )
            if not isinstance(body, dict):
                raise ChainError(f"{what}: expected an object, got {type(body).__name__}")
            n_tx = body.get("n_tx")
            partial = False
        else:
            what = f"{PROVIDER} multiaddr of {len(wanted)} addresses offset {offset}"
            body = await get_json(
                self._client,
                self._limiter,
                f"{self._base}/multiaddr",
                what,
                {"active": "|".join(wanted), "n": self._page_size, "offset": offset},
            )
            if not isinstance(body, dict) or not isinstance(body.get("wallet"), dict):
                raise ChainError(f"{what}: expected an object with a wallet summary")
            n_tx = body["wallet"].get("n_tx")
            partial = True
        total = count(n_tx, f"{what} n_tx")
        txs = body.get("txs")
        if not isinstance(txs, list) or not all(isinstance(tx, dict) for tx in txs):
            raise ChainError(f"{what}: txs is not a list of transactions")
        return total, txs, partial

    def _rows(self, tx: dict[str, Any], wanted: list[str], partial: bool) -> list[AddressTx]:
        txid = tx.get("hash")
        if not isinstance(txid, str) or len(txid) != 64:
            raise ChainError(f"{PROVIDER}: a transaction has no usable hash: {txid!r}")
        what = f"{PROVIDER} tx {txid}"
        inputs = unique_legs(self._inputs(tx, what))
        outputs = unique_legs(self._outputs(tx, what))
        touched = {leg.address for leg in inputs + outputs}
        mine = [a for a in wanted if a in touched]
        if not mine:
            return []
        height = _optional_count(tx.get("block_height"), f"{what} block_height")
        when = None if height is None else datetime.fromtimestamp(count(tx.get("time"), f"{what} time"), UTC)
        fee: int | None = None
        if tx.get("fee") is not None:
            fee = satoshi(tx["fee"], f"{what} fee")
        elif not partial and inputs:
            fee = sum(leg.amount for leg in inputs) - sum(leg.amount for leg in outputs)
        vout_sz = tx.get("vout_sz")
        extra = {"provider": PROVIDER}
        if partial and (not isinstance(vout_sz, int) or len(outputs) < vout_sz):
            extra["partial_outputs"] = "true"
        result = tx.get("result")
        rows = []
        for address in mine:
            if len(mine) == 1 and result is not None:
                net = _signed_satoshi(result, f"{what} result")
            else:
                net = sum(leg.amount for leg in outputs if leg.address == address) - sum(
                    leg.amount for leg in inputs if leg.address == address
                )
            rows.append(
                AddressTx(
                    chain=self.chain,
                    address=address,
                    txid=txid,
                    inputs=inputs,
                    outputs=outputs,
                    net=net,
                    asset="BTC",
                    fee=fee,
                    block_height=height,
                    block_hash=None,
                    block_time=when,
                    extra=dict(extra),
                )
            )
        return rows

    @staticmethod
    def _inputs(tx: dict[str, Any], what: str) -> list[Leg]:
        legs = []
        raw_inputs = tx.get("inputs")
        if not isinstance(raw_inputs, list):
            raise ChainError(f"{what}: inputs is not a list")
        for position, vin in enumerate(raw_inputs):
            prev = vin.get("prev_out") if isinstance(vin, dict) else None
            if prev is None:  # the coinbase input spends nothing
                continue
            if not isinstance(prev, dict):
                raise ChainError(f"{what}: input {position} has an unusable prev_out")
            index = vin.get("index", position)
            legs.append(
                Leg(
                    count(index, f"{what} input index"),
                    canonical_address(prev.get("addr")),
                    satoshi(prev.get("value"), f"{what} input {position} value"),
                    "BTC",
                )
            )
        return legs

    @staticmethod
    def _outputs(tx: dict[str, Any], what: str) -> list[Leg]:
        raw_outputs = tx.get("out")
        if not isinstance(raw_outputs, list) or not all(isinstance(out, dict) for out in raw_outputs):
            raise ChainError(f"{what}: out is not a list of outputs")
        return [
            Leg(
                count(out.get("n"), f"{what} output n"),
                canonical_address(out.get("addr")),
                satoshi(out.get("value"), f"{what} output value"),
                "BTC",
            )
            for out in raw_outputs
        ]


def _optional_count(value: object, what: str) -> int | None:
    return None if value is None else count(value, what)


def _signed_satoshi(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChainError(f"{what}: expected an integer amount of satoshi, got {value!r}")
    if abs(value) > MAX_MONEY:
        raise ChainError(f"{what}: amount {value} is outside ±21 million BTC")
    return value
