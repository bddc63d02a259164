"""The OTC node: distribution of signed orders, anti-entropy, expiry, the owner-authoritative
take and the trade confirmations.

**Distribution.** The owner signs an order and sends its :class:`Announcement` to every peer
(``transport.peers()``: a grape lookup minus suspected peers); a receiver validates it, keeps
the highest version per order id and relays what was new to it, once (a second copy is not
new). Cancels, fills and refreshes are new signed statuses with a higher version.

**Anti-entropy.** On start and every ``anti_entropy_every_s``, the node asks each peer for its
digest (order ids and versions) and fetches what it lacks or holds older: a late joiner or a
partitioned node catches up without new traffic.

**Expiry.** Statuses carry ``expires_at_ms``; the owner re-signs its open orders with a later
expiry every ``refresh_every_s`` while it runs. The others skip expired orders at once and drop
them a TTL later: a vanished owner's orders leave every book within the TTL.

**The take.** The taker's node plans the crossing with the matching engine over its copy of
the book (price, then time, then id), then asks each maker's OWNER to fill up to ``q``. The take
is written (and its ``q`` reserved on the taker order) before it is sent; the owner grants
``min(q, open)`` in one transaction holding its order row (``FOR UPDATE``; a cancel takes the
same lock, so a cancel racing a take wins or loses whole), records the trade and a
confirmation for the taker, and answers with the signed grant; a repeat of the same
(maker, taker) take gets the same grant. The taker records the trade (idempotent by the same
key) and its confirmation for the owner. Confirmations are retried from the outbox until the
other side acknowledges them; one arriving at a taker that never saw the grant (it was killed)
records the trade there. A take that got no answer stays ``pending`` (its quantity reserved,
never offered twice) and is re-sent until the owner answers.

Every change of the node's own orders, takes and trades is one transaction with its audit
entries; the learned book is a cache of others' signed records and is not audited.

**Limits.** FOK is checked against this node's copy of the book: if an owner then grants less
(another taker came first), the order keeps what was granted and the rest is cancelled. Two GTC
orders placed at once on two nodes can rest crossed until one is taken (nothing is over-filled).
A take whose owner never answers again stays pending, its quantity reserved, for good: the owner
may have granted it, so releasing it could over-fill the taker order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel
from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mixhouse.audit import AuditEntry, append, seal
from mixhouse.db.tables import otc_orders
from mixhouse.errors import IllegalTransition, InvalidInput, MixhouseError, NotFound
from mixhouse.otc import store
from mixhouse.otc.grenache.errors import GrenacheError, PeerUnavailable, RpcError
from mixhouse.otc.identity import BadSignature, NodeKey
from mixhouse.otc.matching import MatchingEngine, Order, OrderExpired, Side, TimeInForce, WouldCross, quote_amount
from mixhouse.otc.orders import (
    Announcement,
    InvalidMessage,
    OrderBody,
    OrderId,
    OrderStatus,
    SignedOrder,
    StatusBody,
    check_order,
    check_status,
    check_terms,
    new_nonce,
    parse_announcement,
    parse_model,
    sign_order,
    sign_status,
)
from mixhouse.otc.pairs import pair_rules
from mixhouse.otc.protocol import (
    Confirmation,
    ConfirmBody,
    Grant,
    GrantBody,
    TakeBody,
    TakeReply,
    TakeRequest,
    ack_digest,
    check_ack,
    sign_confirmation,
    sign_grant,
    sign_take,
    trade_id,
    verify_confirmation,
    verify_grant,
    verify_take,
)
from mixhouse.otc.trades import TradeState

log = logging.getLogger(__name__)

MAX_FETCH = 500
MAX_DIGEST = 200_000


class OrderNotOpen(IllegalTransition):
    """The order is cancelled or filled already (a cancel lost to a take, or came twice)."""


class OrderNotFound(NotFound):
    """No own order has this id."""


class PostOnlyWouldTake(InvalidInput):
    """A post-only order crosses the book; it was not placed."""


class ProtocolViolation(InvalidMessage):
    """A peer's message contradicts what this node recorded (a grant larger than asked)."""


def now_ms() -> int:
    """Milliseconds since the Unix epoch (the clock signed into orders)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """Timers and limits of a node (tests shorten the timers).

    Attributes:
        ttl_ms: how long a signed status keeps an order alive (ms); the owner refreshes it.
        refresh_every_s: the owner re-signs its open orders this often (well inside the TTL).
        anti_entropy_every_s: digest exchange with every peer this often (and at start).
        outbox_every_s: confirmations and unanswered takes are retried this often.
        sweep_every_s: expired learned orders are dropped this often (a TTL after expiry).
        max_skew_ms: how far ahead of our clock a peer's creation time may be.
        request_timeout_s: timeout of one RPC to a peer.
    """

    ttl_ms: int = 60_000
    refresh_every_s: float = 15.0
    anti_entropy_every_s: float = 10.0
    outbox_every_s: float = 0.5
    sweep_every_s: float = 5.0
    max_skew_ms: int = 30_000
    request_timeout_s: float = 5.0


class Transport(Protocol):
    """What the node needs of its Grenache peer (:class:`~mixhouse.otc.grenache.peer.GrenachePeer`)."""

    @property
    def address(self) -> str:
        """This node's ``ip:port``."""
        ...

    async def peers(self) -> list[str]:
        """Addresses of the other live peers of the OTC service."""
        ...

    async def request(self, address: str, payload: Any, *, timeout_s: float = 5.0, key: str | None = None) -> Any:
        """One RPC. Raises RpcError (the peer's error reply) or PeerUnavailable."""
        ...


@dataclass(frozen=True, slots=True)
class NewOrder:
    """A user's order before it is signed.

    Attributes:
        pair: ``BASE/QUOTE``.
        side: ``buy`` or ``sell`` (the BASE asset).
        quantity: BASE base units.
        price: QUOTE base units per whole BASE coin.
        tif: ``GTC``, ``IOC``, ``FOK`` or ``POST_ONLY``.
        min_fill: 0 or the smallest fill accepted (base units), as taker and as maker.
        good_till_ms: optional time (ms) after which the owner stops offering it.
    """

    pair: str
    side: str
    quantity: int
    price: int
    tif: str = "GTC"
    min_fill: int = 0
    good_till_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Fill:
    """One fill of a taker order, as the taker's node recorded it.

    Attributes:
        trade_id: the trade's id.
        maker_order_id: the resting order filled.
        quantity: BASE base units.
        price: QUOTE base units per whole BASE coin (the maker's price).
        quote_amount: QUOTE base units (rounded down, :func:`~mixhouse.otc.matching.quote_amount`).
        maker_node: the maker's node id.
    """

    trade_id: str
    maker_order_id: str
    quantity: int
    price: int
    quote_amount: int
    maker_node: str


@dataclass(frozen=True, slots=True)
class PlaceResult:
    """The outcome of placing an order: its id, state, open quantity and the fills it made.

    ``pending`` counts base units asked of makers that have not answered yet (they may still
    be granted: the node keeps asking).
    """

    order_id: OrderId
    state: str
    remaining: int
    pending: int
    fills: list[Fill]


def _dump(model: BaseModel) -> Any:
    return model.model_dump(mode="json")


def _fingerprint(raw: Any) -> bytes | None:
    """SHA-256 of the canonical JSON of a message as received (None if it is not JSON data)."""
    try:
        return hashlib.sha256(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()).digest()
    except (TypeError, ValueError):
        return None


class OtcNode:
    """One OTC peer's logic over its own database; the transport is attached after.

    Args:
        key: the node's identity key (its id owns its orders).
        engine: the node's own database.
        settings: timers and limits.
        clock: ms since the epoch (tests keep the real one; the order times are signed).
    """

    def __init__(
        self,
        *,
        key: NodeKey,
        engine: AsyncEngine,
        settings: NodeSettings | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.key = key
        self.node_id = key.node_id
        self.engine = engine
        self.settings = settings or NodeSettings()
        self.clock = clock
        self._transport: Transport | None = None
        self._directory: dict[str, str] = {}  # node id -> last known address
        self._background: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        # Fingerprints of announcements verified and stored: exact copies are answered at once.
        self._seen: set[bytes] = set()
        self._placing: set[str] = set()  # own orders in their first round of takes
        self._in_flight: set[tuple[str, str]] = set()  # takes being sent right now
        self._actions: dict[str, Callable[[list[Any]], Awaitable[Any]]] = {
            "info": self._on_info,
            "announce": self._on_announce,
            "digest": self._on_digest,
            "fetch": self._on_fetch,
            "take": self._on_take,
            "confirm": self._on_confirm,
        }

    # ---- wiring -------------------------------------------------------------------------

    def attach(self, transport: Transport) -> None:
        """Use ``transport`` for every request to peers (set before :meth:`start`)."""
        self._transport = transport

    @property
    def transport(self) -> Transport:
        """The attached transport.

        Raises:
            RuntimeError: none is attached.
        """
        if self._transport is None:
            raise RuntimeError("attach a transport first")
        return self._transport

    @property
    def address(self) -> str:
        """This node's Grenache address (``ip:port``)."""
        return self.transport.address

    async def start(self) -> None:
        """Re-announce the own open orders (new address, fresh expiry), then run the loops:
        refresh, anti-entropy (first round at once), outbox and pending takes, sweep."""
        await self.refresh_own()
        self._loops = [
            asyncio.create_task(self._every(self.settings.refresh_every_s, self.refresh_own, "refresh")),
            asyncio.create_task(self._every(self.settings.anti_entropy_every_s, self.sync_once, "anti-entropy")),
            asyncio.create_task(self._every(self.settings.outbox_every_s, self.retry_round, "outbox")),
            asyncio.create_task(self._every(self.settings.sweep_every_s, self.sweep, "sweep")),
        ]

    async def close(self) -> None:
        """Stop the loops and wait for the relays in flight (cancelled)."""
        tasks = [*self._loops, *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loops = []

    async def _every(self, period_s: float, step: Callable[[], Awaitable[Any]], name: str) -> None:
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a background loop must outlive one failed round; logged, retried
                log.exception("otc %s round failed", name)
            await asyncio.sleep(period_s)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- the RPC handler ----------------------------------------------------------------

    async def handle(self, key: str, payload: Any) -> Any:  # noqa: ARG002 - one service key
        """Serve one RPC (the Grenache peer's handler).

        Raises:
            RpcError: ``ERR_BAD_REQUEST`` (not ``{"action", "args"}``), ``ERR_UNKNOWN_ACTION``,
                ``ERR_INVALID: ...`` (a message refused: nothing changed), ``ERR_STATE: ...``.
        """
        if not isinstance(payload, dict) or not set(payload) <= {"action", "args"}:
            raise RpcError('ERR_BAD_REQUEST: the payload is {"action": str, "args": [...]}')
        action, args = payload.get("action"), payload.get("args", [])
        if not isinstance(action, str) or not isinstance(args, list) or len(args) > 4:
            raise RpcError('ERR_BAD_REQUEST: the payload is {"action": str, "args": [...]}')
        serve = self._actions.get(action)
        if serve is None:
            raise RpcError(f"ERR_UNKNOWN_ACTION: {action[:40]!r}")
        try:
            return await serve(args)
        except InvalidInput as exc:
            raise RpcError(f"ERR_INVALID: {exc}") from None
        except (IllegalTransition, NotFound) as exc:
            raise RpcError(f"ERR_STATE: {exc}") from None

    @staticmethod
    def _arg(args: list[Any], index: int = 0) -> Any:
        if len(args) <= index:
            raise InvalidMessage(f"argument {index} is missing")
        return args[index]

    async def _on_info(self, args: list[Any]) -> Any:  # noqa: ARG002
        return {"node_id": self.node_id, "address": self.address}

    async def _on_announce(self, args: list[Any]) -> Any:
        raw = self._arg(args)
        fingerprint = _fingerprint(raw)
        if fingerprint is not None and fingerprint in self._seen:
            # A byte-for-byte copy of an announcement already verified and stored (relays make
            # several): nothing would change, so the signature checks, the costly part, are skipped.
            return {"accepted": False}
        ann = self._parse_announcement(raw)
        accepted = await self.ingest(ann)
        if accepted:
            self._spawn(self.broadcast(ann))  # relay once: a second copy is not new here
        return {"accepted": accepted}

    async def _on_digest(self, args: list[Any]) -> Any:  # noqa: ARG002
        async with self.engine.connect() as conn:
            pairs = await store.digest(conn, now_ms=self.clock())
        return {"orders": [[oid, version] for oid, version in pairs]}

    async def _on_fetch(self, args: list[Any]) -> Any:
        ids = self._arg(args)
        if (
            not isinstance(ids, list)
            or len(ids) > MAX_FETCH
            or not all(isinstance(i, str) and len(i) == 64 for i in ids)
        ):
            raise InvalidMessage(f"fetch takes a list of at most {MAX_FETCH} order ids")
        async with self.engine.connect() as conn:
            rows = await store.orders_by_id(conn, ids, now_ms=self.clock())
        return {"orders": [_dump(store.announcement(r)) for r in rows]}

    def _parse_announcement(self, raw: Any) -> Announcement:
        s = self.settings
        return parse_announcement(raw, now_ms=self.clock(), max_skew_ms=s.max_skew_ms, max_ttl_ms=2 * s.ttl_ms)

    # ---- distribution -------------------------------------------------------------------

    async def ingest(self, ann: Announcement) -> bool:
        """Store a validated foreign announcement; True if it was new (or a newer version)."""
        if ann.order.body.owner == self.node_id:
            return False  # our own order relayed back: our row is the authority
        async with self.engine.begin() as conn:
            accepted = await store.upsert_learned(conn, ann)
        if accepted:
            self._directory[ann.order.body.owner] = ann.status.body.address
            fingerprint = _fingerprint(_dump(ann))
            if fingerprint is not None:
                self._seen.add(fingerprint)
        return accepted

    async def broadcast(self, ann: Announcement) -> int:
        """Send ``ann`` to every peer; returns how many accepted it as new."""
        payload = {"action": "announce", "args": [_dump(ann)]}
        peers = await self._peers()
        replies = await asyncio.gather(
            *(self._request(p, payload) for p in peers),
            return_exceptions=True,
        )
        accepted = 0
        for reply in replies:
            if isinstance(reply, dict) and reply.get("accepted") is True:
                accepted += 1
            elif isinstance(reply, BaseException) and not isinstance(reply, GrenacheError):
                raise reply
        return accepted

    async def _peers(self) -> list[str]:
        try:
            return await self.transport.peers()
        except GrenacheError as exc:
            log.warning("otc peer lookup failed: %s", exc)
            return []

    async def _request(self, address: str, payload: Any) -> Any:
        return await self.transport.request(address, payload, timeout_s=self.settings.request_timeout_s)

    async def sync_once(self) -> int:
        """Anti-entropy with every peer: fetch the orders (or newer statuses) we lack.

        Returns:
            How many announcements were new to us.
        """
        learned = 0
        for address in await self._peers():
            try:
                learned += await self._sync_with(address)
            except GrenacheError as exc:
                log.info("otc anti-entropy with %s failed: %s", address, exc)
            except InvalidMessage as exc:
                log.warning("otc anti-entropy with %s: bad reply: %s", address, exc)
        return learned

    async def _sync_with(self, address: str) -> int:
        info = await self._request(address, {"action": "info", "args": []})
        if isinstance(info, dict) and isinstance(info.get("node_id"), str):
            self._directory[info["node_id"]] = address
        reply = await self._request(address, {"action": "digest", "args": []})
        entries = reply.get("orders") if isinstance(reply, dict) else None
        if not isinstance(entries, list) or len(entries) > MAX_DIGEST:
            raise InvalidMessage("a digest is {'orders': [[id, version], ...]}")
        theirs: dict[str, int] = {}
        for entry in entries:
            if (
                isinstance(entry, list)
                and len(entry) == 2
                and isinstance(entry[0], str)
                and len(entry[0]) == 64
                and isinstance(entry[1], int)
            ):
                theirs[entry[0]] = entry[1]
        if not theirs:
            return 0
        async with self.engine.connect() as conn:
            ours = await store.versions(conn, list(theirs))
        wanted = [oid for oid, version in theirs.items() if ours.get(oid, 0) < version]
        learned = 0
        for start in range(0, len(wanted), MAX_FETCH):
            chunk = wanted[start : start + MAX_FETCH]
            fetched = await self._request(address, {"action": "fetch", "args": [chunk]})
            for raw in fetched.get("orders", []) if isinstance(fetched, dict) else []:
                try:
                    ann = self._parse_announcement(raw)
                except InvalidMessage as exc:
                    log.info("otc anti-entropy: refused an order from %s: %s", address, exc)
                    continue
                learned += await self.ingest(ann)
        return learned

    async def refresh_own(self) -> int:
        """Re-sign every open, offered own order with a fresh expiry and the current address,
        and broadcast it. Returns how many were refreshed."""
        async with self.engine.connect() as conn:
            rows = await store.own_orders(conn, states=["open"])
        refreshed = 0
        for row in rows:
            if not row.rested:
                continue
            if row.good_till_ms is not None and row.good_till_ms <= self.clock():
                continue
            ann = await self._restate(row.id, audit=None)
            if ann is not None:
                refreshed += 1
                self._spawn(self.broadcast(ann))
        return refreshed

    async def sweep(self) -> int:
        """Drop learned orders expired for more than a TTL (those a take or trade refers to stay)
        and seal the audit entries written since the last sweep."""
        if len(self._seen) > 100_000:
            self._seen.clear()  # only a shortcut for copies: they are then checked in full
        # The node's database has no Mixhouse worker: the node chains its own audit entries.
        await seal(self.engine, wait=False)
        async with self.engine.begin() as conn:
            return await store.drop_expired_learned(conn, before_ms=self.clock() - self.settings.ttl_ms)

    # ---- own order status ---------------------------------------------------------------

    def _expiry(self, row: Row[Any]) -> int:
        expires = self.clock() + self.settings.ttl_ms
        if row.good_till_ms is not None:
            expires = min(expires, row.good_till_ms)
        return max(expires, int(row.expires_at_ms))

    def _sign(self, oid: str, *, version: int, visible: int, state: str, expires_at_ms: int) -> OrderStatus:
        return sign_status(
            self.key,
            StatusBody(
                order_id=oid,
                version=version,
                remaining=visible,
                state=state,
                expires_at_ms=expires_at_ms,
                address=self.address,
            ),
        )

    async def _write_own(
        self,
        conn: AsyncConnection,
        row: Row[Any],
        *,
        remaining: int | None = None,
        reserved: int | None = None,
        state: str | None = None,
        rested: bool | None = None,
    ) -> Announcement:
        """Write a changed own order (row locked by the caller) with a new signed status."""
        remaining = row.remaining if remaining is None else remaining
        reserved = row.reserved if reserved is None else reserved
        state = row.state if state is None else state
        if state == "open" and remaining == 0:
            state = "filled"
        rested = row.rested if rested is None else rested
        status = self._sign(
            row.id,
            version=row.version + 1,
            visible=remaining - reserved,
            state=state,
            expires_at_ms=self._expiry(row),
        )
        await store.set_own_status(conn, row.id, status, remaining=remaining, reserved=reserved, rested=rested)
        return Announcement(order=store.signed_order(row), status=status)

    async def _restate(self, oid: str, *, audit: str | None) -> Announcement | None:
        async with self.engine.begin() as conn:
            row = await store.get_order(conn, oid, lock=True)
            if row is None or not row.mine or row.state != "open" or row.remaining - row.reserved <= 0:
                return None
            ann = await self._write_own(conn, row)
            if audit:
                await append(conn, [self._audit(audit, row)])
        return ann

    def _audit(self, action: str, row: Row[Any], *, amount: int | None = None, **details: Any) -> AuditEntry:
        return AuditEntry(
            action=action,
            entity_type="otc_order",
            entity_id=row.id,
            actor="otc",
            asset=pair_rules(row.pair).base,
            amount=amount,
            details={"pair": row.pair, "side": row.side, "price": str(row.price), **details},
        )

    # ---- user operations ----------------------------------------------------------------

    async def place(self, new: NewOrder) -> PlaceResult:
        """Sign and place an order: take what crosses it (asking each maker's owner), then
        rest the remainder (GTC, POST_ONLY) or cancel it (IOC, FOK).

        Raises:
            InvalidMessage: bad terms (see :func:`~mixhouse.otc.orders.check_terms`).
            PostOnlyWouldTake: a POST_ONLY order crosses the book.
        """
        now = self.clock()
        if new.good_till_ms is not None and new.good_till_ms <= now:
            raise InvalidMessage("good_till_ms is in the past")
        body = parse_model(
            OrderBody,
            {
                "owner": self.node_id,
                "pair": new.pair,
                "side": new.side,
                "quantity": new.quantity,
                "price": new.price,
                "tif": new.tif,
                "min_fill": new.min_fill,
                "created_at_ms": now,
                "good_till_ms": new.good_till_ms,
                "nonce": new_nonce(),
            },
        )
        rules = check_terms(body)
        order = sign_order(self.key, body)
        oid = order.id
        plan = await self._plan(order)
        if body.tif == "POST_ONLY" and plan.blocked:
            raise PostOnlyWouldTake("the post-only order would take liquidity")
        expires = (
            now + self.settings.ttl_ms
            if body.good_till_ms is None
            else min(now + self.settings.ttl_ms, body.good_till_ms)
        )
        status = self._sign(oid, version=1, visible=body.quantity, state="open", expires_at_ms=expires)
        async with self.engine.begin() as conn:
            await store.insert_own_order(conn, order, status)
            row = await store.get_order(conn, oid)
            assert row is not None
            await append(conn, [self._audit("otc.order.placed", row, amount=body.quantity, tif=body.tif)])
        self._placing.add(oid)
        try:
            if body.tif != "FOK" or plan.complete:
                for planned in plan.fills:
                    await self._take_one(order, planned.maker.id, planned.quantity)
        finally:
            self._placing.discard(oid)
        await self._finish_round(oid)
        async with self.engine.connect() as conn:
            row = await store.get_order(conn, oid)
            # From the database, not from the replies: the owner's confirmation can record a
            # fill before its reply arrives (the reply then finds it recorded).
            trades = await store.trades(conn, order_id=oid)
        assert row is not None
        del rules
        fills = [
            Fill(t.id, t.maker_order_id, t.quantity, t.price, t.quote_amount, t.maker_node)
            for t in trades
            if t.taker_order_id == oid
        ]
        return PlaceResult(oid, row.state, row.remaining, row.reserved, fills)

    async def _plan(self, order: SignedOrder) -> Any:
        body = order.body
        rules = pair_rules(body.pair)
        limit = body.price
        now = self.clock()
        async with self.engine.connect() as conn:
            rows = await store.crossing_orders(
                conn, pair=body.pair, taker_side=body.side, limit_price=limit, exclude_owner=self.node_id, now_ms=now
            )
        book = MatchingEngine(rules)
        for r in rows:
            try:
                book.add(self._engine_order(r), now_ms=now)
            except (WouldCross, OrderExpired, InvalidInput) as exc:
                log.debug("otc plan: skipped %s: %s", r.id[:12], exc)
        taker = Order(
            id=order.id,
            owner=body.owner,
            side=Side(body.side),
            price=body.price,
            quantity=body.quantity,
            created_ms=body.created_at_ms,
            tif=TimeInForce[body.tif],
            min_fill=body.min_fill,
        )
        return book.plan_take(taker, now_ms=now)

    @staticmethod
    def _engine_order(row: Row[Any]) -> Order:
        return Order(
            id=row.id,
            owner=row.owner,
            side=Side(row.side),
            price=row.price,
            quantity=row.quantity,
            created_ms=row.created_at_ms,
            expires_at_ms=row.expires_at_ms,
            tif=TimeInForce.GTC,
            min_fill=min(row.min_fill, row.remaining),
            remaining=row.remaining,
            cancelled=row.quantity - row.remaining,
        )

    async def cancel(self, oid: str) -> Announcement:
        """Cancel an own order: a compare-and-set on its row (a take holding the row first wins).

        Raises:
            OrderNotFound: no own order ``oid``.
            OrderNotOpen: it is filled or cancelled already.
        """
        async with self.engine.begin() as conn:
            row = await store.get_order(conn, oid, lock=True)
            if row is None or not row.mine:
                raise OrderNotFound(f"no own order {oid[:16]}")
            if row.state != "open":
                raise OrderNotOpen(f"order {oid[:16]} is {row.state}")
            ann = await self._write_own(conn, row, state="cancelled")
            await append(conn, [self._audit("otc.order.cancelled", row, amount=row.remaining - row.reserved)])
        if row.rested:
            self._spawn(self.broadcast(ann))
        return ann

    # ---- the take, taker's side ---------------------------------------------------------

    async def _take_one(self, order: SignedOrder, maker_id: str, quantity: int) -> Fill | None:
        """Reserve ``quantity`` of our order, record the take, send it to the maker's owner."""
        taker_id = order.id
        async with self.engine.begin() as conn:
            own = await store.get_order(conn, taker_id, lock=True)
            maker = await store.get_order(conn, maker_id)
            if own is None or maker is None or own.remaining - own.reserved < quantity:
                return None
            if not await store.insert_take(
                conn, maker_order_id=maker_id, taker_order_id=taker_id, maker_owner=maker.owner, quantity=quantity
            ):
                return None
            await conn.execute(
                otc_orders.update().where(otc_orders.c.id == taker_id).values(reserved=own.reserved + quantity)
            )
            await append(conn, [self._audit("otc.take.requested", own, amount=quantity, maker_order_id=maker_id)])
        return await self._send_take(order, maker, quantity)

    async def _send_take(self, order: SignedOrder, maker: Row[Any], quantity: int) -> Fill | None:
        key = (maker.id, order.id)
        if key in self._in_flight:
            return None
        self._in_flight.add(key)
        try:
            request = sign_take(
                self.key,
                TakeBody(maker_order_id=maker.id, taker_order=order, quantity=quantity, reply_to=self.address),
            )
            address = await self._resolve(maker.owner) or maker.address
            try:
                data = await self._request(address, {"action": "take", "args": [_dump(request)]})
            except RpcError as exc:
                if exc.message.startswith(("ERR_INVALID", "ERR_STATE", "ERR_BAD_REQUEST")):
                    # The owner refused the request itself before changing anything.
                    log.info("otc take of %s refused with an error: %s", maker.id[:12], exc.message)
                    await self._refuse_take(maker.id, order.id)
                else:
                    # The owner's handler failed (its database, say): the take stays pending.
                    log.info("otc take of %s failed at the owner: %s; will retry", maker.id[:12], exc.message)
                return None
            except PeerUnavailable as exc:
                # Unknown outcome: the take stays pending, its quantity reserved, re-sent later.
                log.info("otc take of %s: no answer (%s); will retry", maker.id[:12], exc)
                self._directory.pop(maker.owner, None)
                return None
            try:
                reply = parse_model(TakeReply, data)
            except InvalidMessage as exc:
                log.warning("otc take of %s: bad reply: %s", maker.id[:12], exc)
                return None
            maker_order = store.signed_order(maker)
            if reply.status is not None:
                try:
                    check_status(
                        reply.status,
                        maker_order.body,
                        maker.id,
                        now_ms=self.clock(),
                        max_ttl_ms=2 * self.settings.ttl_ms,
                    )
                    await self.ingest(Announcement(order=maker_order, status=reply.status))
                except InvalidMessage as exc:
                    log.info("otc take of %s: status not kept: %s", maker.id[:12], exc)
            if reply.outcome == "refused" or reply.grant is None:
                await self._refuse_take(maker.id, order.id)
                return None
            return await self.record_taker_fill(reply.grant, maker_order, order, peer_confirmed=False)
        finally:
            self._in_flight.discard(key)

    async def _refuse_take(self, maker_id: str, taker_id: str) -> None:
        async with self.engine.begin() as conn:
            take = await store.get_take(conn, maker_id, taker_id)
            own = await store.get_order(conn, taker_id, lock=True)
            if take is None or take.state != "pending" or own is None:
                return
            await store.resolve_take(conn, maker_id, taker_id, state="refused", granted=None)
            if own.rested and own.state == "open":
                ann = await self._write_own(conn, own, reserved=own.reserved - take.quantity)
                self._spawn(self.broadcast(ann))
            else:
                await conn.execute(
                    otc_orders.update().where(otc_orders.c.id == taker_id).values(reserved=own.reserved - take.quantity)
                )
            await append(conn, [self._audit("otc.take.refused", own, amount=take.quantity, maker_order_id=maker_id)])

    def _check_grant(self, grant: Grant, maker_order: SignedOrder, taker_order: SignedOrder) -> None:
        b = grant.body
        try:
            verify_grant(grant, maker_order.body.owner)
        except BadSignature as exc:
            raise InvalidMessage(f"grant: {exc}") from exc
        if (
            b.maker_order_id != maker_order.id
            or b.taker_order_id != taker_order.id
            or b.trade_id != trade_id(maker_order.id, taker_order.id)
        ):
            raise InvalidMessage("the grant names other orders")
        if b.price != maker_order.body.price or b.quantity <= 0:
            raise InvalidMessage("the grant's price or quantity is wrong")

    async def record_taker_fill(
        self, grant: Grant, maker_order: SignedOrder, taker_order: SignedOrder, *, peer_confirmed: bool
    ) -> Fill | None:
        """Record a granted fill of our taker order (idempotent by (maker, taker)) and queue
        our confirmation for the maker's owner.

        Raises:
            InvalidMessage: the grant is not the maker owner's, names other orders, or
                exceeds what we asked (:class:`ProtocolViolation`).
        """
        self._check_grant(grant, maker_order, taker_order)
        b = grant.body
        rules = pair_rules(maker_order.body.pair)
        ann: Announcement | None = None
        async with self.engine.begin() as conn:
            own = await store.get_order(conn, taker_order.id, lock=True)
            take = await store.get_take(conn, maker_order.id, taker_order.id)
            if own is None or not own.mine or take is None:
                raise InvalidMessage("no take of ours matches the grant")
            existing = await store.get_trade(conn, maker_order.id, taker_order.id)
            if existing is not None:
                if peer_confirmed and not existing.peer_confirmed:
                    await store.mark_trade(conn, existing.id, peer_confirmed=True)
                return None
            if b.quantity > take.quantity:
                raise ProtocolViolation("the grant is larger than the take asked")
            released = take.quantity if take.state == "pending" else 0
            new_remaining, new_reserved = own.remaining - b.quantity, own.reserved - released
            if new_remaining < new_reserved or new_remaining < 0:
                raise ProtocolViolation("the grant would over-fill our order")
            quote = quote_amount(b.quantity, b.price, rules.base_decimals)
            await store.insert_trade(
                conn,
                id=b.trade_id,
                maker_order_id=maker_order.id,
                taker_order_id=taker_order.id,
                role="taker",
                pair=maker_order.body.pair,
                taker_side=taker_order.body.side,
                price=b.price,
                quantity=b.quantity,
                quote_amount=quote,
                maker_node=maker_order.body.owner,
                taker_node=self.node_id,
                state=TradeState.AGREED.value,
                peer_confirmed=peer_confirmed,
                agreed_at_ms=b.agreed_at_ms,
            )
            await store.resolve_take(conn, maker_order.id, taker_order.id, state="granted", granted=b.quantity)
            ann = await self._write_own(conn, own, remaining=new_remaining, reserved=new_reserved)
            confirmation = self._confirmation(grant, maker_order, taker_order)
            await store.enqueue(
                conn,
                target_node=maker_order.body.owner,
                kind="confirm",
                trade_id=b.trade_id,
                payload=_dump(confirmation),
            )
            await append(
                conn,
                [
                    self._audit("otc.order.filled", own, amount=b.quantity, trade_id=b.trade_id, role="taker"),
                    AuditEntry(
                        action="otc.trade.agreed",
                        entity_type="otc_trade",
                        entity_id=b.trade_id,
                        actor="otc",
                        asset=rules.base,
                        amount=b.quantity,
                        details={"role": "taker", "price": str(b.price), "quote_amount": str(quote)},
                    ),
                ],
            )
        if own.rested and ann is not None:
            self._spawn(self.broadcast(ann))
        return Fill(b.trade_id, maker_order.id, b.quantity, b.price, quote, maker_order.body.owner)

    def _confirmation(self, grant: Grant, maker_order: SignedOrder, taker_order: SignedOrder) -> Confirmation:
        return sign_confirmation(
            self.key,
            ConfirmBody(
                grant=grant,
                maker_order=maker_order,
                taker_order=taker_order,
                sender=self.node_id,
                reply_to=self.address,
            ),
        )

    async def _finish_round(self, oid: str) -> None:
        """After an order's first round of takes: offer the rest (GTC, POST_ONLY) or cancel
        it (IOC, FOK). An order whose open part is all reserved by unanswered takes waits."""
        async with self.engine.begin() as conn:
            row = await store.get_order(conn, oid, lock=True)
            if row is None or row.rested or row.state != "open":
                return
            visible = row.remaining - row.reserved
            if row.tif in {"IOC", "FOK"}:
                await self._write_own(conn, row, state="cancelled")
                await append(conn, [self._audit("otc.order.cancelled", row, amount=visible, reason=row.tif)])
                return
            if visible <= 0:
                return
            ann = await self._write_own(conn, row, rested=True)
            await append(conn, [self._audit("otc.order.rested", row, amount=visible)])
        self._spawn(self.broadcast(ann))

    async def retry_round(self) -> None:
        """Deliver due outbox messages, re-send unanswered takes, finish orders whose first
        round was interrupted (a restart)."""
        await self.deliver_outbox()
        async with self.engine.connect() as conn:
            pending = await store.pending_takes(conn)
            unrested = [r for r in await store.own_orders(conn, states=["open"]) if not r.rested]
        for take in pending:
            if (take.maker_order_id, take.taker_order_id) in self._in_flight:
                continue
            async with self.engine.connect() as conn:
                own = await store.get_order(conn, take.taker_order_id)
                maker = await store.get_order(conn, take.maker_order_id)
            if own is None or maker is None:
                continue
            await self._send_take(store.signed_order(own), maker, take.quantity)
        for row in unrested:
            if row.id not in self._placing:
                await self._finish_round(row.id)

    # ---- the take, owner's side ---------------------------------------------------------

    async def _on_take(self, args: list[Any]) -> Any:
        request = parse_model(TakeRequest, self._arg(args))
        taker_order = request.body.taker_order
        taker_id = check_order(taker_order, now_ms=self.clock(), max_skew_ms=self.settings.max_skew_ms)
        try:
            verify_take(request)
        except BadSignature as exc:
            raise InvalidMessage(f"take: {exc}") from exc
        if taker_order.body.owner == self.node_id:
            raise InvalidMessage("a node does not take its own orders")
        quantity = request.body.quantity
        if not 0 < quantity <= taker_order.body.quantity:
            raise InvalidMessage("the take's quantity must be in (0, the taker order's quantity]")
        self._directory[taker_order.body.owner] = request.body.reply_to
        reply, ann = await self._grant(request.body.maker_order_id, taker_order, taker_id, quantity)
        if ann is not None:
            self._spawn(self.broadcast(ann))
        return _dump(reply)

    def _refusal(self, reason: str, row: Row[Any] | None) -> tuple[TakeReply, None]:
        status = store.signed_status(row) if row is not None and row.mine and row.rested else None
        return TakeReply(outcome="refused", reason=reason, status=status), None

    async def _grant(
        self, maker_id: str, taker_order: SignedOrder, taker_id: str, quantity: int
    ) -> tuple[TakeReply, Announcement | None]:
        taker = taker_order.body
        now = self.clock()
        async with self.engine.begin() as conn:
            row = await store.get_order(conn, maker_id, lock=True)
            existing = await store.get_trade(conn, maker_id, taker_id)
            if row is not None and existing is not None:
                # A repeat of a granted take: the same grant, never a second one.
                grant = self._grant_of(existing)
                return TakeReply(outcome="granted", grant=grant, status=store.signed_status(row)), None
            if row is None or not row.mine:
                return self._refusal("unknown order", None)
            if row.state != "open" or not row.rested:
                return self._refusal(f"order is {row.state if row.state != 'open' else 'not offered'}", row)
            if row.expires_at_ms <= now:
                return self._refusal("order expired", row)
            if taker.pair != row.pair or taker.side == row.side:
                return self._refusal("the orders do not match (pair or side)", row)
            crosses = taker.price >= row.price if taker.side == "buy" else taker.price <= row.price
            if not crosses:
                return self._refusal("the prices do not cross", row)
            available = row.remaining - row.reserved
            granted = min(quantity, available)
            if granted <= 0:
                return self._refusal("nothing left", row)
            if row.min_fill and granted < row.min_fill and granted < available:
                return self._refusal("below the order's minimum fill", row)
            if taker.min_fill and granted < taker.min_fill and granted < quantity:
                return self._refusal("below the taker's minimum fill", row)
            rules = pair_rules(row.pair)
            body = GrantBody(
                trade_id=trade_id(maker_id, taker_id),
                maker_order_id=maker_id,
                taker_order_id=taker_id,
                quantity=granted,
                price=row.price,
                agreed_at_ms=now,
            )
            grant = sign_grant(self.key, body)
            ann = await self._write_own(conn, row, remaining=row.remaining - granted)
            quote = quote_amount(granted, row.price, rules.base_decimals)
            await store.insert_trade(
                conn,
                id=body.trade_id,
                maker_order_id=maker_id,
                taker_order_id=taker_id,
                role="maker",
                pair=row.pair,
                taker_side=taker.side,
                price=row.price,
                quantity=granted,
                quote_amount=quote,
                maker_node=self.node_id,
                taker_node=taker.owner,
                state=TradeState.AGREED.value,
                agreed_at_ms=now,
            )
            confirmation = self._confirmation(grant, store.signed_order(row), taker_order)
            await store.enqueue(
                conn, target_node=taker.owner, kind="confirm", trade_id=body.trade_id, payload=_dump(confirmation)
            )
            await append(
                conn,
                [
                    self._audit("otc.order.filled", row, amount=granted, trade_id=body.trade_id, role="maker"),
                    AuditEntry(
                        action="otc.trade.agreed",
                        entity_type="otc_trade",
                        entity_id=body.trade_id,
                        actor="otc",
                        asset=rules.base,
                        amount=granted,
                        details={"role": "maker", "price": str(row.price), "quote_amount": str(quote)},
                    ),
                ],
            )
        return TakeReply(outcome="granted", grant=grant, status=ann.status), ann

    def _grant_of(self, trade: Row[Any]) -> Grant:
        body = GrantBody(
            trade_id=trade.id,
            maker_order_id=trade.maker_order_id,
            taker_order_id=trade.taker_order_id,
            quantity=trade.quantity,
            price=trade.price,
            agreed_at_ms=trade.agreed_at_ms,
        )
        return sign_grant(self.key, body)

    # ---- confirmations ------------------------------------------------------------------

    async def _on_confirm(self, args: list[Any]) -> Any:
        confirmation = parse_model(Confirmation, self._arg(args))
        try:
            verify_confirmation(confirmation)
        except BadSignature as exc:
            raise InvalidMessage(f"confirmation: {exc}") from exc
        b = confirmation.body
        now, skew = self.clock(), self.settings.max_skew_ms
        check_order(b.maker_order, now_ms=now, max_skew_ms=skew)
        check_order(b.taker_order, now_ms=now, max_skew_ms=skew)
        self._check_grant(b.grant, b.maker_order, b.taker_order)
        maker_owner, taker_owner = b.maker_order.body.owner, b.taker_order.body.owner
        self._directory[b.sender] = b.reply_to
        if maker_owner == self.node_id and b.sender == taker_owner:
            async with self.engine.begin() as conn:
                trade = await store.get_trade(conn, b.maker_order.id, b.taker_order.id)
                if trade is None or trade.role != "maker":
                    raise InvalidMessage("this node granted no such trade")
                if not trade.peer_confirmed:
                    await store.mark_trade(conn, trade.id, peer_confirmed=True)
                    await append(conn, [self._trade_audit("otc.trade.confirmed", trade.id, "maker")])
        elif taker_owner == self.node_id and b.sender == maker_owner:
            await self.record_taker_fill(b.grant, b.maker_order, b.taker_order, peer_confirmed=True)
            async with self.engine.begin() as conn:
                trade = await store.get_trade(conn, b.maker_order.id, b.taker_order.id)
                if trade is not None and not trade.peer_confirmed:
                    await store.mark_trade(conn, trade.id, peer_confirmed=True)
                    await append(conn, [self._trade_audit("otc.trade.confirmed", trade.id, "taker")])
        else:
            raise InvalidMessage("the sender and this node are not the trade's two parties")
        # The acknowledgement is signed: a sender marks its confirmation delivered only when
        # the trade's other party itself answered (not whoever an address led to).
        return {"ok": True, "ack": self.key.sign(ack_digest(b.grant.body.trade_id))}

    @staticmethod
    def _trade_audit(action: str, tid: str, role: str) -> AuditEntry:
        return AuditEntry(action=action, entity_type="otc_trade", entity_id=tid, actor="otc", details={"role": role})

    async def deliver_outbox(self) -> int:
        """Send due outbox messages; returns how many were acknowledged."""
        async with self.engine.connect() as conn:
            messages = await store.due_messages(conn, limit=50)
        delivered = 0
        for message in messages:
            address = await self._resolve(message.target_node)
            try:
                if address is None:
                    raise PeerUnavailable(f"no address known for node {message.target_node[:12]}")
                reply = await self._request(address, {"action": message.kind, "args": [message.payload]})
                if message.trade_id is not None:
                    check_ack(reply, node=message.target_node, trade_id=message.trade_id)
            except GrenacheError as exc:
                if isinstance(exc, PeerUnavailable):
                    self._directory.pop(message.target_node, None)
                delay = min(0.2 * 2 ** min(message.attempts, 10), 10.0)
                log.info(
                    "otc %s to %s not acknowledged (%s); retry in %.1f s",
                    message.kind,
                    message.target_node[:12],
                    exc,
                    delay,
                )
                async with self.engine.begin() as conn:
                    await store.postpone(conn, message.id, delay_s=delay)
                continue
            async with self.engine.begin() as conn:
                await store.mark_delivered(conn, message.id)
                if message.trade_id is not None:
                    await store.mark_trade(conn, message.trade_id, confirm_acked=True)
                    await append(conn, [self._trade_audit("otc.trade.confirm_acked", message.trade_id, "sender")])
            delivered += 1
        return delivered

    async def _resolve(self, node: str) -> str | None:
        """The address of ``node``: last seen, or asked of every peer (``info``), or the one
        in its latest status."""
        if node in self._directory:
            return self._directory[node]
        for address in await self._peers():
            try:
                info = await self._request(address, {"action": "info", "args": []})
            except GrenacheError:
                continue
            if isinstance(info, dict) and isinstance(info.get("node_id"), str):
                self._directory[info["node_id"]] = address
        if node in self._directory:
            return self._directory[node]
        async with self.engine.connect() as conn:
            stmt = (
                select(otc_orders.c.address)
                .where(otc_orders.c.owner == node)
                .order_by(otc_orders.c.updated_at.desc())
                .limit(1)
            )
            return (await conn.execute(stmt)).scalar_one_or_none()

    # ---- reads --------------------------------------------------------------------------

    async def book(self, pair: str) -> list[Row[Any]]:
        """The open orders of ``pair`` this node knows (its own offered ones too), bids then
        asks, best first."""
        pair_rules(pair)
        async with self.engine.connect() as conn:
            return await store.book(conn, pair=pair, now_ms=self.clock())

    async def own(self, states: Sequence[str] | None = None) -> list[Row[Any]]:
        """The node's own orders."""
        async with self.engine.connect() as conn:
            return await store.own_orders(conn, states=states)

    async def trades(self, order_id: OrderId | None = None) -> list[Row[Any]]:
        """The node's trades."""
        async with self.engine.connect() as conn:
            return await store.trades(conn, order_id=order_id)


__all__ = [
    "Fill",
    "MixhouseError",
    "NewOrder",
    "NodeSettings",
    "OrderNotFound",
    "OrderNotOpen",
    "OtcNode",
    "PlaceResult",
    "PostOnlyWouldTake",
    "ProtocolViolation",
    "Transport",
    "now_ms",
]
