"""The Jobcoin chain adapter: any server speaking the Jobcoin HTTP API (ours or the original).

Jobcoin is a bare account ledger: no signatures, no blocks, no fees, no txids. Hence:

* a transfer is final once the ledger lists it (``confirmations_required = 1``);
* a deposit's ref is its position: ``"<address>#<n>"`` is the n-th (0-based) incoming
  transfer of that address in ledger order;
* a send cannot be made idempotent (``has_idempotent_send = False``): whether it landed is
  read from the sender's history by counting transfers of the same from/to pair
  (:meth:`JobcoinAdapter.check_send`);
* deposit addresses are plain names derived from a secret, so that outsiders cannot link a
  name to its index nor guess the next one.

Amounts on the wire are decimal strings in whole jobcoins (8 decimals); inside, ``int`` base
units. Every network failure is a :class:`~mixhouse.errors.ChainError` (or a subclass).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import httpx

from mixhouse.chains.base import (
    ChainAdapter,
    FeeQuote,
    PreparedSend,
    SendCheck,
    SendState,
    Transfer,
)
from mixhouse.chains.jobcoin.ledger import MAX_WAIT_MS, WAITED_HEADER, validate_address
from mixhouse.errors import (
    BroadcastRejected,
    ChainError,
    ConfigError,
    InvalidAmount,
    SendOutcomeUnknown,
)
from mixhouse.money import Asset, asset_info, format_amount

DECIMALS = asset_info(Asset.JOBCOIN).decimals
SCAN_CONCURRENCY = 16
# History cursor pages: ids per page, pages per scan (then the scan resumes at the next one).
PAGE_SIZE = 5000
MAX_PAGES_PER_SCAN = 20
# Sends per batch request (the ledger takes at most 1,000).
_BATCH_SIZE = 500
# Addresses per incoming-transfers request (the ledger takes at most 1,000).
_BATCH_READ_SIZE = 1000
MIN_SECRET_BYTES = 16
# No "mix-" prefix: a deposit address should not announce itself as one (issue 13).
DEPOSIT_PREFIX = ""
_DEPOSIT_HEX_CHARS = 24  # 96 bits: unguessable, and short enough to type

# Failures raised before a single byte of the request left: retrying cannot double-send.
_NOTHING_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
)


@dataclass(frozen=True, slots=True)
class _LedgerTx:
    """One item of a Jobcoin history; ``from_address`` is ``None`` for minted coins."""

    from_address: str | None
    to_address: str
    amount: int


def _parse_wire_amount(value: object) -> int:
    """A wire amount (decimal string in jobcoins, ``"0"`` allowed) as base units, exactly.

    Raises:
        ChainError: not a plain non-negative decimal string with at most 8 decimals.
    """
    if not isinstance(value, str) or not value or any(ch not in "0123456789." for ch in value):
        raise ChainError(f"the ledger sent an amount we cannot read: {value!r}")
    try:
        # A precision as long as the text: the default 28 digits would round long amounts.
        scaled = Decimal(value).scaleb(DECIMALS, Context(prec=len(value) + DECIMALS))
    except InvalidOperation as exc:
        raise ChainError(f"the ledger sent an amount we cannot read: {value!r}") from exc
    if scaled != scaled.to_integral_value():
        raise ChainError(f"the ledger sent an amount finer than {DECIMALS} decimals: {value!r}")
    return int(scaled)


def _parse_history(body: Any) -> tuple[int, list[_LedgerTx]]:
    """``(balance, transactions)`` from a ``GET /addresses/{a}`` answer.

    Raises:
        ChainError: the answer does not have the documented shape.
    """
    if not isinstance(body, dict) or not isinstance(body.get("transactions"), list):
        raise ChainError("the ledger's address answer has no transactions list")
    balance = _parse_wire_amount(body.get("balance"))
    txs: list[_LedgerTx] = []
    for item in body["transactions"]:
        if not isinstance(item, dict):
            raise ChainError("the ledger sent a transaction that is not an object")
        from_address = item.get("fromAddress")
        to_address = item.get("toAddress")
        if not isinstance(to_address, str) or not (from_address is None or isinstance(from_address, str)):
            raise ChainError(f"the ledger sent a transaction with unreadable addresses: {item!r}")
        txs.append(_LedgerTx(from_address, to_address, _parse_wire_amount(item.get("amount"))))
    return balance, txs


def _address_path(address: str) -> str:
    # Names may hold "/", "?", "#" or be "..": encode everything, dots included, so that
    # neither httpx's dot-segment removal nor the router reads them as URL structure.
    return quote(address, safe="").replace(".", "%2E")


class JobcoinAdapter(ChainAdapter):
    """:class:`~mixhouse.chains.base.ChainAdapter` for a Jobcoin API at ``api_url``.

    Args:
        api_url: the API root, e.g. ``"http://127.0.0.1:8111/api"`` (routes are appended).
        pool_address: the address payouts leave from; must be a valid Jobcoin address.
        address_secret: key of the HMAC that derives deposit addresses; at least 16 bytes,
            kept secret and stable (changing it changes every deposit address).
        client: an HTTP client to use (not closed by :meth:`aclose`); by default the
            adapter makes and owns one with ``timeout`` seconds per request.
        timeout: per-request timeout in seconds for the client the adapter creates.

    Raises:
        ConfigError: ``address_secret`` is shorter than 16 bytes.
        InvalidAddress: ``pool_address`` is not a valid Jobcoin address.
    """

    def __init__(
        self,
        api_url: str,
        pool_address: str,
        *,
        address_secret: bytes,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        if len(address_secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"the Jobcoin address secret must be at least {MIN_SECRET_BYTES} bytes")
        self.asset = Asset.JOBCOIN
        self.confirmations_required = 1
        self.has_idempotent_send = False
        # The ledger answers {"status": "OK"} only after the transfer is committed: final.
        self.final_on_broadcast = True
        self.pool_address = validate_address(pool_address)
        self._api_url = api_url.rstrip("/")
        self._secret = address_secret
        # Whether the ledger has the history cursor / the batch send / the incoming-transfers
        # read: unknown (None) until its first answer.
        self._cursor_api: bool | None = None
        self._batch_api: bool | None = None
        self._incoming_api: bool | None = None
        # The long poll of new transfers (our ledger's ``wait_ms``): unknown until first tried.
        self._wait_api: bool | None = None
        # The history id the last scan read through (what a long poll waits to see exceeded).
        self._head: int | None = None
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout)

    # -- addresses -------------------------------------------------------------------------

    def normalize_address(self, text: str) -> str:
        """Return ``text`` unchanged if it is a valid Jobcoin address (nothing is stripped).

        Raises:
            InvalidAddress: empty, longer than 128, non-printable characters, or surrounded
                by whitespace.
        """
        return validate_address(text)

    def deposit_address(self, index: int) -> str:
        """The first 24 hex digits of HMAC-SHA256(secret, index as 8 bytes BE).

        Deterministic for one secret; without the secret an address reveals nothing about its
        index and the next address cannot be guessed.

        Raises:
            ValueError: ``index`` is negative or does not fit in 64 bits.
        """
        if not 0 <= index < 2**64:
            raise ValueError(f"deposit index out of range: {index}")
        digest = hmac.new(self._secret, index.to_bytes(8, "big"), hashlib.sha256).hexdigest()
        return DEPOSIT_PREFIX + digest[:_DEPOSIT_HEX_CHARS]

    # -- reading ---------------------------------------------------------------------------

    async def _history(self, address: str) -> tuple[int, list[_LedgerTx]]:
        """``(balance, transactions)`` of ``address``, oldest first.

        Raises:
            ChainError: network failure, non-200 answer or unreadable body.
        """
        url = f"{self._api_url}/addresses/{_address_path(address)}"
        try:
            response = await self._client.get(url)
        except httpx.HTTPError as exc:
            raise ChainError(f"Jobcoin API unreachable ({type(exc).__name__}: {exc})") from exc
        if response.status_code != 200:
            raise ChainError(f"Jobcoin API answered {response.status_code} for {address!r}: {response.text[:200]}")
        try:
            body = response.json()
        except ValueError as exc:
            raise ChainError("Jobcoin API sent a body that is not JSON") from exc
        return _parse_history(body)

    async def _incoming(self, address: str) -> list[_LedgerTx]:
        _, txs = await self._history(address)
        return [tx for tx in txs if tx.to_address == address]

    # The ledger's history is read by the scanning engine (mixhouse.watch.jobcoin): these are
    # the reads it is made of.

    async def history_page(self, after: int, *, limit: int | None = None) -> list[tuple[int, str]] | None:
        """``(id, toAddress)`` of up to ``limit`` (default :data:`PAGE_SIZE`) transfers after id
        ``after``, in id order (our ledger's history cursor,
        ``GET /transactions?after=<id>&limit=<n>``); ``None`` on a ledger without it (the
        original API), remembered for :meth:`wait_for_transfers`.

        Raises:
            ChainError: the API failed, or the page is not in id order or unreadable.
        """
        page = await self._page(after, limit=limit)
        self._cursor_api = page is not None
        previous = after
        for transfer_id, _ in page or []:
            if transfer_id <= previous:
                raise ChainError(f"the ledger's page after {after} is not in id order")
            previous = transfer_id
        return page

    @property
    def history_cursor(self) -> bool | None:
        """Whether the ledger has the history cursor: ``None`` until a page was asked."""
        return self._cursor_api

    async def last_history_id(self, known: int) -> int:
        """The ledger's highest transfer id, ``known`` being one it has (or 0). Raises ChainError."""
        return await self._last_id(known)

    def saw_history(self, transfer_id: int) -> None:
        """Note that the history has been read through ``transfer_id``: what
        :meth:`wait_for_transfers` waits to see exceeded."""
        self._head = transfer_id

    async def incoming_transfers(self, addresses: Sequence[str], *, batched: bool) -> tuple[Transfer, ...]:
        """Every incoming transfer of ``addresses``, ``ref`` ``"<address>#<n>"`` (the n-th, 0-based,
        incoming transfer of the address in ledger order), ``confirmations`` 1, no block.
        ``batched``: ``POST /incoming`` (ours), 1,000 addresses a request, where the ledger has
        it; else one ``GET /addresses/{a}`` each, 16 at once.

        Raises:
            ChainError: the API failed or sent an answer we cannot read.
        """
        return await self._incoming_transfers(list(dict.fromkeys(addresses)), batched=batched)

    async def wait_for_transfers(self, wait_seconds: float) -> bool:
        """Wait up to ``wait_seconds`` for a transfer after the history this adapter's last
        scan read (our ledger's long poll, ``GET /transactions?after=<id>&wait_ms=<n>``);
        returns whether one came, i.e. whether a scan now would find something new.

        Returns ``False`` at once on a ledger without the long poll (the original API: no
        history cursor, or an answer without the ``X-Jobcoin-Waited`` header, remembered), or
        before a first scan: the caller then scans at its next tick, as without it. A wake-up
        is a hint, not a record: the scan still reads the history itself (the transfer may pay
        an address nobody watches).

        Raises:
            ChainError: the API failed.
        """
        if self._cursor_api is not True or self._wait_api is False or self._head is None or wait_seconds <= 0:
            return False
        wait_ms = min(int(wait_seconds * 1000), MAX_WAIT_MS)
        try:
            response = await self._client.get(
                f"{self._api_url}/transactions",
                params={"after": str(self._head), "limit": "1", "wait_ms": str(wait_ms)},
                timeout=httpx.Timeout(wait_ms / 1000 + 10.0),
            )
        except httpx.HTTPError as exc:
            raise ChainError(f"Jobcoin API unreachable ({type(exc).__name__}: {exc})") from exc
        if response.status_code != 200:
            if 400 <= response.status_code < 500:
                self._wait_api = False
                return False
            raise ChainError(f"Jobcoin API answered {response.status_code} for a long poll: {response.text[:200]}")
        if WAITED_HEADER not in response.headers:
            self._wait_api = False  # an answer at once, whatever it holds: no long poll there
            return False
        self._wait_api = True
        try:
            body = response.json()
        except ValueError as exc:
            raise ChainError("Jobcoin API sent a body that is not JSON") from exc
        return isinstance(body, list) and bool(body)

    async def _last_id(self, known: int) -> int:
        """The ledger's highest transfer id, given that ``known`` is an id it has: found with
        one-item pages (``after=x&limit=1`` is empty exactly when no id is above ``x``),
        galloping up from ``known`` then bisecting, about ``2 log2(distance)`` requests. Only
        a scan that stopped at its page limit needs it.

        Raises:
            ChainError: the API failed or sent a page we cannot read.
        """

        async def above(x: int) -> bool:
            page = await self._page(x, limit=1)
            return bool(page)

        low, step = known, 1  # an id at or below ``low`` exists; ``low`` is the best known
        while await above(low + step - 1):
            low, step = low + step, step * 2
        high = low + step - 1  # no id above ``high``
        # The highest id is in low..high: the least x in there with nothing above it.
        while low < high:
            middle = (low + high) // 2
            if await above(middle):
                low = middle + 1
            else:
                high = middle
        return low

    async def _page(self, after: int, *, limit: int | None = None) -> list[tuple[int, str]] | None:
        """``(id, toAddress)`` of the transfers after ``after``; ``None`` if the ledger ignores
        the cursor (items without ``id``) or does not know the parameters (4xx).

        Raises:
            ChainError: network failure, 5xx, or an unreadable body.
        """
        url = f"{self._api_url}/transactions"
        size = PAGE_SIZE if limit is None else limit
        try:
            response = await self._client.get(url, params={"after": str(after), "limit": str(size)})
        except httpx.HTTPError as exc:
            raise ChainError(f"Jobcoin API unreachable ({type(exc).__name__}: {exc})") from exc
        if 400 <= response.status_code < 500:
            return None
        if response.status_code != 200:
            raise ChainError(f"Jobcoin API answered {response.status_code} for the history: {response.text[:200]}")
        try:
            body = response.json()
        except ValueError as exc:
            raise ChainError("Jobcoin API sent a body that is not JSON") from exc
        if not isinstance(body, list):
            raise ChainError("the ledger's history is not a list")
        page: list[tuple[int, str]] = []
        for item in body:
            if not isinstance(item, dict):
                raise ChainError("the ledger sent a transaction that is not an object")
            transfer_id, to_address = item.get("id"), item.get("toAddress")
            if transfer_id is None:
                return None  # the original API: the whole history, no cursor
            if type(transfer_id) is not int or not isinstance(to_address, str):
                raise ChainError(f"the ledger sent a history item we cannot read: {item!r}")
            page.append((transfer_id, to_address))
        return page

    async def _incoming_transfers(self, addresses: Sequence[str], *, batched: bool) -> tuple[Transfer, ...]:
        """Every incoming transfer of ``addresses``. ``batched`` (a ledger with our history
        cursor): one request per 1,000 addresses (``POST /incoming``, our extension) unless the
        ledger turns out not to have it; otherwise, or then, one ``GET /addresses/{a}`` each,
        at most 16 at once.

        Raises:
            ChainError: the API failed or sent an answer we cannot read.
        """
        if not addresses:
            return ()
        incoming: dict[str, list[_LedgerTx]] | None = None
        if batched and self._incoming_api is not False:
            incoming = {}
            for start in range(0, len(addresses), _BATCH_READ_SIZE):
                chunk = await self._incoming_many(addresses[start : start + _BATCH_READ_SIZE])
                if chunk is None:
                    self._incoming_api = False
                    incoming = None
                    break
                self._incoming_api = True
                incoming.update(chunk)
        if incoming is None:
            incoming = await self._incoming_each(addresses)
        transfers: list[Transfer] = []
        for address in addresses:
            for n, tx in enumerate(incoming[address]):
                transfers.append(
                    Transfer(
                        to_address=address,
                        from_addresses=() if tx.from_address is None else (tx.from_address,),
                        amount=tx.amount,
                        ref=f"{address}#{n}",
                        block_number=None,
                        confirmations=1,
                    )
                )
        return tuple(transfers)

    async def _incoming_each(self, addresses: Sequence[str]) -> dict[str, list[_LedgerTx]]:
        """``{address: incoming}`` read with one ``GET /addresses/{a}`` each (the original API)."""
        gate = asyncio.Semaphore(SCAN_CONCURRENCY)

        async def read(address: str) -> list[_LedgerTx]:
            async with gate:
                return await self._incoming(address)

        # return_exceptions: let every request finish instead of leaving orphans running.
        results = await asyncio.gather(*(read(a) for a in addresses), return_exceptions=True)
        out: dict[str, list[_LedgerTx]] = {}
        for address, result in zip(addresses, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            out[address] = result
        return out

    async def _incoming_many(self, addresses: Sequence[str]) -> dict[str, list[_LedgerTx]] | None:
        """``{address: incoming, oldest first}`` of up to 1,000 addresses in one request (our
        ledger's ``POST /incoming``); ``None`` if the ledger has no such route (404/405).

        Raises:
            ChainError: network failure, another non-200 answer or an unreadable body.
        """
        try:
            response = await self._client.post(f"{self._api_url}/incoming", json={"addresses": list(addresses)})
        except httpx.HTTPError as exc:
            raise ChainError(f"Jobcoin API unreachable ({type(exc).__name__}: {exc})") from exc
        if response.status_code in {404, 405}:
            return None
        if response.status_code != 200:
            raise ChainError(f"Jobcoin API answered {response.status_code} for incoming: {response.text[:200]}")
        try:
            body = response.json()
        except ValueError as exc:
            raise ChainError("Jobcoin API sent a body that is not JSON") from exc
        found = body.get("incoming") if isinstance(body, dict) else None
        if not isinstance(found, dict):
            raise ChainError("the ledger's incoming answer has no incoming object")
        out: dict[str, list[_LedgerTx]] = {}
        for address in addresses:
            items = found.get(address)
            if not isinstance(items, list):
                raise ChainError(f"the ledger's incoming answer lacks {address!r}")
            txs = _parse_history({"balance": "0", "transactions": items})[1]
            if any(tx.to_address != address for tx in txs):
                raise ChainError(f"the ledger's incoming answer for {address!r} holds another receiver")
            out[address] = txs
        return out

    async def transfer_confirmations(self, transfer: Transfer) -> int | None:
        """``1`` if the ledger still lists the transfer at its position with the same amount,
        else ``None``.

        Raises:
            ChainError: the API failed, or ``transfer.ref`` is not a Jobcoin ref.
        """
        address, _, position = transfer.ref.rpartition("#")
        if not address or not position.isdigit():
            raise ChainError(f"not a Jobcoin transfer ref: {transfer.ref!r}")
        n = int(position)
        incoming = await self._incoming(address)
        if n < len(incoming) and incoming[n].amount == transfer.amount:
            return 1
        return None

    async def balance(self, address: str) -> int:
        """Balance of ``address`` in base units (``0`` for an unused address).

        Raises:
            ChainError: the API failed.
        """
        balance, _ = await self._history(address)
        return balance

    # -- sending ---------------------------------------------------------------------------

    async def quote_network_fee(self) -> FeeQuote:
        """Always zero: Jobcoin has no network fee."""
        return FeeQuote(0, "Jobcoin transfers have no network fee")

    async def next_nonce(self, address: str) -> int | None:  # noqa: ARG002
        """Always ``None``: Jobcoin has no nonces."""
        return None

    async def prepare_send(
        self,
        *,
        from_address: str,
        from_key_index: int | None,  # noqa: ARG002
        to_address: str,
        amount: int,
        fee: FeeQuote,  # noqa: ARG002
        nonce: int | None,  # noqa: ARG002
    ) -> PreparedSend:
        """Describe the send; nothing to sign on Jobcoin. Makes no network call.

        ``from_key_index``, ``fee`` and ``nonce`` are ignored: the ledger has no keys, fees
        or nonces (``network_fee_max`` is 0, within any quote).

        Raises:
            InvalidAddress: an address is not a valid Jobcoin address (a caller bug).
            InvalidAmount: ``amount`` is not positive (a caller bug).
        """
        validate_address(from_address)
        validate_address(to_address)
        if amount <= 0:
            raise InvalidAmount(f"a send must move a positive amount, got {amount}")
        return PreparedSend(
            from_address=from_address,
            to_address=to_address,
            amount=amount,
            network_fee_max=0,
            raw_tx=None,
            txid=None,
            nonce=None,
        )

    async def broadcast(self, prepared: PreparedSend) -> None:
        """``POST /transactions`` once. Not idempotent: ask :meth:`check_send` before a retry.

        Raises:
            BroadcastRejected: a 4xx answer (422 "Insufficient Funds" included): nothing moved.
            SendOutcomeUnknown: a timeout or broken connection after the request may have
                left, or a 5xx answer: the transfer may have landed.
            ChainError: the connection could not be opened: nothing was sent.
        """
        payload = {
            "fromAddress": prepared.from_address,
            "toAddress": prepared.to_address,
            "amount": format_amount(prepared.amount, DECIMALS),
        }
        try:
            response = await self._client.post(f"{self._api_url}/transactions", json=payload)
        except _NOTHING_SENT as exc:
            raise ChainError(f"Jobcoin API unreachable ({type(exc).__name__}: {exc})") from exc
        except httpx.HTTPError as exc:
            raise SendOutcomeUnknown(
                f"Jobcoin send {prepared.from_address!r} -> {prepared.to_address!r} may have landed "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        if 400 <= status < 500:
            raise BroadcastRejected(f"Jobcoin API refused the send ({status}): {_error_message(response)}")
        raise SendOutcomeUnknown(f"Jobcoin API answered {status}; the send may have landed")

    async def broadcast_many(self, batch: Sequence[PreparedSend]) -> list[ChainError | None]:
        """Send ``batch`` (at most one send per from/to pair) with as few requests as possible:
        ``POST /transactions/batch`` on our ledger, else one ``POST /transactions`` each. Not
        idempotent, like :meth:`broadcast`.

        Returns:
            Per send, in order: ``None`` if it landed, else the error :meth:`broadcast` would
            have raised (``BroadcastRejected``: nothing moved; ``SendOutcomeUnknown``: it may
            have landed, e.g. the whole request timed out; ``ChainError``: nothing was sent).
        """
        if not batch:
            return []
        if self._batch_api is not False:
            results: list[ChainError | None] = []
            for start in range(0, len(batch), _BATCH_SIZE):
                chunk = batch[start : start + _BATCH_SIZE]
                answered = await self._post_batch(chunk)
                if answered is None:
                    self._batch_api = False
                    return results + await self._broadcast_each(batch[start:])
                self._batch_api = True
                results.extend(answered)
            return results
        return await self._broadcast_each(batch)

    async def _broadcast_each(self, batch: Sequence[PreparedSend]) -> list[ChainError | None]:
        gate = asyncio.Semaphore(SCAN_CONCURRENCY)

        async def one(prepared: PreparedSend) -> ChainError | None:
            async with gate:
                try:
                    await self.broadcast(prepared)
                except ChainError as exc:
                    return exc
                return None

        return list(await asyncio.gather(*(one(p) for p in batch)))

    async def _post_batch(self, chunk: Sequence[PreparedSend]) -> list[ChainError | None] | None:
        """One batch request; ``None`` if the ledger has no batch route (404/405: nothing moved)."""
        payload = {
            "transactions": [
                {
                    "fromAddress": p.from_address,
                    "toAddress": p.to_address,
                    "amount": format_amount(p.amount, DECIMALS),
                }
                for p in chunk
            ]
        }
        what = f"a batch of {len(chunk)} Jobcoin sends"
        try:
            response = await self._client.post(f"{self._api_url}/transactions/batch", json=payload)
        except _NOTHING_SENT as exc:
            return [ChainError(f"Jobcoin API unreachable ({type(exc).__name__}: {exc})")] * len(chunk)
        except httpx.HTTPError as exc:
            return [SendOutcomeUnknown(f"{what} may have landed ({type(exc).__name__}: {exc})")] * len(chunk)
        status = response.status_code
        if status in {404, 405}:
            return None
        if 400 <= status < 500:
            rejected = BroadcastRejected(f"Jobcoin API refused {what} ({status}): {_error_message(response)}")
            return [rejected] * len(chunk)
        if status != 200:
            return [SendOutcomeUnknown(f"Jobcoin API answered {status}; {what} may have landed")] * len(chunk)
        try:
            items = response.json().get("results")
        except (ValueError, AttributeError):
            items = None
        if not isinstance(items, list) or len(items) != len(chunk):
            # Answered but unreadable: each send may or may not have moved.
            return [SendOutcomeUnknown(f"the ledger's answer to {what} is unreadable")] * len(chunk)
        out: list[ChainError | None] = []
        for item in items:
            if isinstance(item, dict) and item.get("status") == "OK":
                out.append(None)
            elif isinstance(item, dict) and isinstance(item.get("error"), str):
                out.append(BroadcastRejected(f"Jobcoin API refused the send: {item['error']}"))
            else:
                out.append(SendOutcomeUnknown(f"the ledger's answer to one send of {what} is unreadable"))
        return out

    async def check_send(self, prepared: PreparedSend, *, earlier_sends: int) -> SendCheck:
        """Find the send in the sender's history: the ``earlier_sends``-th (0-based) transfer
        from ``prepared.from_address`` to ``prepared.to_address`` is this one.

        Returns:
            ``CONFIRMED`` with 1 confirmation and fee 0 if present, else ``NOT_FOUND``.

        Raises:
            ChainError: the API failed, or the matching transfer's amount differs from
                ``prepared.amount`` (the caller's count of earlier sends is wrong).
        """
        if earlier_sends < 0:
            raise ValueError(f"earlier_sends must not be negative, got {earlier_sends}")
        _, txs = await self._history(prepared.from_address)
        matching = [
            tx for tx in txs if tx.from_address == prepared.from_address and tx.to_address == prepared.to_address
        ]
        if len(matching) <= earlier_sends:
            return SendCheck(state=SendState.NOT_FOUND, confirmations=0, network_fee_paid=None)
        found = matching[earlier_sends]
        if found.amount != prepared.amount:
            raise ChainError(
                f"transfer #{earlier_sends} from {prepared.from_address!r} to {prepared.to_address!r} "
                f"moved {found.amount} base units, the send expected {prepared.amount}"
            )
        return SendCheck(state=SendState.CONFIRMED, confirmations=1, network_fee_paid=0)

    async def aclose(self) -> None:
        """Close the HTTP client if this adapter created it."""
        if self._owns_client:
            await self._client.aclose()


def _error_message(response: httpx.Response) -> str:
    """The ``error`` text of a Jobcoin error body, or the start of the raw body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return error
    return response.text[:200]
