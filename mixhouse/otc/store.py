"""Data access of the OTC node's tables (``otc_*`` in :mod:`mixhouse.db.tables`).

Every function takes an open ``AsyncConnection`` and never commits: the node
(:mod:`mixhouse.otc.node`) owns each transaction and writes its audit entries in it.
Amounts are ints in base units; times from orders are ms since the Unix epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, and_, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from mixhouse.db.tables import otc_orders, otc_outbox, otc_takes, otc_trades
from mixhouse.otc.orders import Announcement, OrderBody, OrderId, OrderStatus, SignedOrder, StatusBody


def _order_columns(order: SignedOrder) -> dict[str, Any]:
    body = order.body
    return {
        "id": order.id,
        "owner": body.owner,
        "pair": body.pair,
        "side": body.side,
        "quantity": body.quantity,
        "price": body.price,
        "tif": body.tif,
        "min_fill": body.min_fill,
        "created_at_ms": body.created_at_ms,
        "good_till_ms": body.good_till_ms,
        "nonce": body.nonce,
        "order_sig": order.sig,
    }


def status_columns(status: OrderStatus) -> dict[str, Any]:
    """The columns of ``otc_orders`` a signed status sets."""
    body = status.body
    return {
        "version": body.version,
        "remaining": body.remaining,
        "state": body.state,
        "expires_at_ms": body.expires_at_ms,
        "address": body.address,
        "status_sig": status.sig,
    }


def signed_order(row: Row[Any]) -> SignedOrder:
    """The signed order of an ``otc_orders`` row."""
    body = OrderBody(
        owner=row.owner,
        pair=row.pair,
        side=row.side,
        quantity=row.quantity,
        price=row.price,
        tif=row.tif,
        min_fill=row.min_fill,
        created_at_ms=row.created_at_ms,
        good_till_ms=row.good_till_ms,
        nonce=row.nonce,
    )
    return SignedOrder(body=body, sig=row.order_sig)


def signed_status(row: Row[Any]) -> OrderStatus:
    """The last signed status of an ``otc_orders`` row."""
    body = StatusBody(
        order_id=row.id,
        version=row.version,
        remaining=row.remaining if not row.mine else row.remaining - row.reserved,
        state=row.state,
        expires_at_ms=row.expires_at_ms,
        address=row.address,
    )
    return OrderStatus(body=body, sig=row.status_sig)


def announcement(row: Row[Any]) -> Announcement:
    """What the network carries about the order of an ``otc_orders`` row."""
    return Announcement(order=signed_order(row), status=signed_status(row))


async def insert_own_order(conn: AsyncConnection, order: SignedOrder, status: OrderStatus) -> None:
    """Store a new own order (not offered yet: ``rested`` false)."""
    values = {**_order_columns(order), **status_columns(status), "mine": True, "reserved": 0, "rested": False}
    # The signed status of an own order shows what others may take, remaining - reserved;
    # the row keeps the full remaining (nothing is reserved yet).
    values["remaining"] = order.body.quantity
    await conn.execute(otc_orders.insert().values(**values))


async def upsert_learned(conn: AsyncConnection, ann: Announcement) -> bool:
    """Store a foreign order or its newer status; the highest version wins.

    Returns:
        True if the row was inserted or moved to a newer version (the caller relays it).
    """
    values = {**_order_columns(ann.order), **status_columns(ann.status), "mine": False}
    stmt = insert(otc_orders).values(**values)
    upsert = stmt.on_conflict_do_update(
        index_elements=[otc_orders.c.id],
        set_={**status_columns(ann.status), "updated_at": func.now()},
        where=and_(otc_orders.c.version < stmt.excluded.version, otc_orders.c.mine.is_(False)),
    ).returning(otc_orders.c.id)
    return (await conn.execute(upsert)).first() is not None


async def get_order(conn: AsyncConnection, oid: str, *, lock: bool = False) -> Row[Any] | None:
    """The ``otc_orders`` row of ``oid`` (locked FOR UPDATE if ``lock``), or ``None``."""
    stmt = select(otc_orders).where(otc_orders.c.id == oid)
    if lock:
        stmt = stmt.with_for_update()
    return (await conn.execute(stmt)).first()


async def set_own_status(
    conn: AsyncConnection, oid: str, status: OrderStatus, *, remaining: int, reserved: int, rested: bool
) -> None:
    """Write an own order's new signed status, its full remaining and its reservation."""
    values = {**status_columns(status), "remaining": remaining, "reserved": reserved, "rested": rested}
    await conn.execute(
        update(otc_orders)
        .where(otc_orders.c.id == oid, otc_orders.c.mine.is_(True))
        .values(**values, updated_at=func.now())
    )


async def crossing_orders(
    conn: AsyncConnection, *, pair: str, taker_side: str, limit_price: int, exclude_owner: str, now_ms: int
) -> list[Row[Any]]:
    """Foreign open orders a taker could fill, best first: price then time (created_at_ms, id).

    A buy crosses sells priced at or below ``limit_price``; a sell crosses buys at or above.
    Orders of ``exclude_owner`` (the taker's own node: no self-trade) and expired ones are left out.
    """
    maker_side = "sell" if taker_side == "buy" else "buy"
    c = otc_orders.c
    price_ok = c.price <= limit_price if taker_side == "buy" else c.price >= limit_price
    price_order = c.price.asc() if taker_side == "buy" else c.price.desc()
    stmt = (
        select(otc_orders)
        .where(
            c.pair == pair,
            c.side == maker_side,
            c.state == "open",
            c.mine.is_(False),
            c.owner != exclude_owner,
            c.expires_at_ms > now_ms,
            c.remaining > 0,
            price_ok,
        )
        .order_by(price_order, c.created_at_ms, c.id)
        .limit(200)
    )
    return list((await conn.execute(stmt)).all())


async def book(conn: AsyncConnection, *, pair: str, now_ms: int) -> list[Row[Any]]:
    """Every open, unexpired, offered order of ``pair`` (own and learned), in price-time order
    per side (bids best first, then asks best first)."""
    c = otc_orders.c
    visible = c.remaining - c.reserved
    stmt = (
        select(otc_orders)
        .where(
            c.pair == pair,
            c.state == "open",
            c.expires_at_ms > now_ms,
            (c.mine.is_(False)) | (c.rested.is_(True) & (visible > 0)),
        )
        .order_by(c.side, c.price.desc(), c.created_at_ms, c.id)
    )
    rows = list((await conn.execute(stmt)).all())
    bids = [r for r in rows if r.side == "buy"]
    asks = sorted((r for r in rows if r.side == "sell"), key=lambda r: (r.price, r.created_at_ms, r.id))
    return bids + asks


async def digest(conn: AsyncConnection, *, now_ms: int) -> list[tuple[str, int]]:
    """(id, version) of every unexpired order this node would give a peer (own offered ones
    and learned ones, terminal states included: a peer learns cancels and fills from them)."""
    c = otc_orders.c
    stmt = select(c.id, c.version).where(c.expires_at_ms > now_ms, (c.mine.is_(False)) | c.rested.is_(True))
    return [(r.id, r.version) for r in await conn.execute(stmt)]


async def versions(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, int]:
    """The stored version of each of ``ids`` that is stored."""
    rows = await conn.execute(select(otc_orders.c.id, otc_orders.c.version).where(otc_orders.c.id.in_(list(ids))))
    return {r.id: r.version for r in rows}


async def orders_by_id(conn: AsyncConnection, ids: Sequence[str], *, now_ms: int) -> list[Row[Any]]:
    """The offered (own) or learned unexpired rows among ``ids``."""
    c = otc_orders.c
    stmt = select(otc_orders).where(
        c.id.in_(list(ids)), c.expires_at_ms > now_ms, (c.mine.is_(False)) | c.rested.is_(True)
    )
    return list((await conn.execute(stmt)).all())


async def own_orders(conn: AsyncConnection, *, states: Sequence[str] | None = None) -> list[Row[Any]]:
    """The node's own orders (optionally only in ``states``), newest first."""
    stmt = select(otc_orders).where(otc_orders.c.mine.is_(True))
    if states is not None:
        stmt = stmt.where(otc_orders.c.state.in_(list(states)))
    return list((await conn.execute(stmt.order_by(otc_orders.c.created_at_ms.desc(), otc_orders.c.id))).all())


async def drop_expired_learned(conn: AsyncConnection, *, before_ms: int) -> int:
    """Delete learned orders that expired before ``before_ms``; returns how many."""
    referenced = select(otc_takes.c.maker_order_id).union(select(otc_trades.c.maker_order_id))
    result = await conn.execute(
        otc_orders.delete().where(
            otc_orders.c.mine.is_(False),
            otc_orders.c.expires_at_ms < before_ms,
            otc_orders.c.id.not_in(referenced),
        )
    )
    return result.rowcount or 0


# Takes (the taker's side) -------------------------------------------------------------------


async def insert_take(
    conn: AsyncConnection, *, maker_order_id: str, taker_order_id: str, maker_owner: str, quantity: int
) -> bool:
    """Record a take before it is sent; False if this (maker, taker) take exists already."""
    stmt = (
        insert(otc_takes)
        .values(
            maker_order_id=maker_order_id,
            taker_order_id=taker_order_id,
            maker_owner=maker_owner,
            quantity=quantity,
            state="pending",
        )
        .on_conflict_do_nothing()
        .returning(otc_takes.c.maker_order_id)
    )
    return (await conn.execute(stmt)).first() is not None


async def get_take(conn: AsyncConnection, maker_order_id: str, taker_order_id: str) -> Row[Any] | None:
    """The take of (maker, taker), locked FOR UPDATE, or ``None``."""
    stmt = (
        select(otc_takes)
        .where(otc_takes.c.maker_order_id == maker_order_id, otc_takes.c.taker_order_id == taker_order_id)
        .with_for_update()
    )
    return (await conn.execute(stmt)).first()


async def resolve_take(
    conn: AsyncConnection, maker_order_id: str, taker_order_id: str, *, state: str, granted: int | None
) -> None:
    """Move a pending take to ``granted`` or ``refused``."""
    await conn.execute(
        update(otc_takes)
        .where(otc_takes.c.maker_order_id == maker_order_id, otc_takes.c.taker_order_id == taker_order_id)
        .values(state=state, granted=granted, updated_at=func.now())
    )


async def pending_takes(conn: AsyncConnection, *, taker_order_id: str | None = None) -> list[Row[Any]]:
    """Takes still unanswered (of one taker order, or all), oldest first."""
    stmt = select(otc_takes).where(otc_takes.c.state == "pending")
    if taker_order_id is not None:
        stmt = stmt.where(otc_takes.c.taker_order_id == taker_order_id)
    return list((await conn.execute(stmt.order_by(otc_takes.c.created_at))).all())


# Trades -------------------------------------------------------------------------------------


async def insert_trade(conn: AsyncConnection, **values: Any) -> bool:
    """Record a trade; False if the fill (maker, taker) is recorded already (idempotent)."""
    stmt = insert(otc_trades).values(**values).on_conflict_do_nothing().returning(otc_trades.c.id)
    return (await conn.execute(stmt)).first() is not None


async def get_trade(conn: AsyncConnection, maker_order_id: str, taker_order_id: str) -> Row[Any] | None:
    """The trade of the fill (maker, taker), or ``None``."""
    stmt = select(otc_trades).where(
        otc_trades.c.maker_order_id == maker_order_id, otc_trades.c.taker_order_id == taker_order_id
    )
    return (await conn.execute(stmt)).first()


async def mark_trade(conn: AsyncConnection, trade_id: str, **flags: bool) -> None:
    """Set ``peer_confirmed`` and/or ``confirm_acked`` of a trade."""
    await conn.execute(update(otc_trades).where(otc_trades.c.id == trade_id).values(**flags, updated_at=func.now()))


async def trades(conn: AsyncConnection, *, order_id: OrderId | None = None) -> list[Row[Any]]:
    """The node's trades (of one order, or all), oldest first."""
    stmt = select(otc_trades)
    if order_id is not None:
        stmt = stmt.where((otc_trades.c.maker_order_id == order_id) | (otc_trades.c.taker_order_id == order_id))
    return list((await conn.execute(stmt.order_by(otc_trades.c.agreed_at_ms, otc_trades.c.id))).all())


# Outbox -------------------------------------------------------------------------------------


async def enqueue(conn: AsyncConnection, *, target_node: str, kind: str, trade_id: str | None, payload: Any) -> None:
    """Queue a message to another node, to be delivered (retried) until acknowledged."""
    await conn.execute(
        otc_outbox.insert().values(target_node=target_node, kind=kind, trade_id=trade_id, payload=payload)
    )


async def due_messages(conn: AsyncConnection, *, limit: int) -> list[Row[Any]]:
    """Undelivered messages whose next attempt is due, oldest first (one sender per node)."""
    stmt = (
        select(otc_outbox)
        .where(otc_outbox.c.delivered_at.is_(None), otc_outbox.c.next_attempt_at <= func.now())
        .order_by(otc_outbox.c.next_attempt_at, otc_outbox.c.id)
        .limit(limit)
    )
    return list((await conn.execute(stmt)).all())


async def mark_delivered(conn: AsyncConnection, message_id: int) -> None:
    """The peer acknowledged the message."""
    await conn.execute(update(otc_outbox).where(otc_outbox.c.id == message_id).values(delivered_at=func.now()))


async def postpone(conn: AsyncConnection, message_id: int, *, delay_s: float) -> None:
    """Count a failed attempt and try again after ``delay_s`` seconds."""
    await conn.execute(
        update(otc_outbox)
        .where(otc_outbox.c.id == message_id)
        .values(
            attempts=otc_outbox.c.attempts + 1,
            next_attempt_at=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, delay_s),
        )
    )


async def undelivered_count(conn: AsyncConnection) -> int:
    """Messages not acknowledged yet."""
    stmt = select(func.count()).select_from(otc_outbox).where(otc_outbox.c.delivered_at.is_(None))
    return int((await conn.execute(stmt)).scalar_one())
