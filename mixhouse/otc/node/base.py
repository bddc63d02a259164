"""The node's state and wiring (transport, loops, background tasks), its address directory,
the signed status of its own orders and the read queries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mixhouse.audit import AuditEntry, append
from mixhouse.db.tables import otc_orders
from mixhouse.otc import store
from mixhouse.otc.grenache.errors import GrenacheError
from mixhouse.otc.identity import NodeKey
from mixhouse.otc.node.settings import NodeSettings, Transport, now_ms
from mixhouse.otc.orders import (
    Announcement,
    InvalidMessage,
    OrderId,
    OrderStatus,
    SignedOrder,
    StatusBody,
    sign_status,
)
from mixhouse.otc.pairs import pair_rules
from mixhouse.otc.protocol import (
    Confirmation,
    ConfirmBody,
    Grant,
    sign_confirmation,
)

log = logging.getLogger(__name__)


class NodeBase:
    """State, wiring, the address directory and the signed status of own orders (the
    parts every side of :class:`~mixhouse.otc.node.OtcNode` uses).

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

    @staticmethod
    def _arg(args: list[Any], index: int = 0) -> Any:
        if len(args) <= index:
            raise InvalidMessage(f"argument {index} is missing")
        return args[index]

    async def _peers(self) -> list[str]:
        try:
            return await self.transport.peers()
        except GrenacheError as exc:
            log.warning("otc peer lookup failed: %s", exc)
            return []

    async def _request(self, address: str, payload: Any) -> Any:
        return await self.transport.request(address, payload, timeout_s=self.settings.request_timeout_s)

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

    @staticmethod
    def _trade_audit(action: str, tid: str, role: str) -> AuditEntry:
        return AuditEntry(action=action, entity_type="otc_trade", entity_id=tid, actor="otc", details={"role": role})

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
