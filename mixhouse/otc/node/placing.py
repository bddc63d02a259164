"""Placing and cancelling the user's orders: plan the crossing over the local book, take,
rest or cancel the rest."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Row

from mixhouse.audit import append
from mixhouse.errors import InvalidInput
from mixhouse.otc import store
from mixhouse.otc.matching import MatchingEngine, Order, OrderExpired, Side, TimeInForce, WouldCross
from mixhouse.otc.node.confirmations import Confirmations
from mixhouse.otc.node.errors import OrderNotFound, OrderNotOpen, PostOnlyWouldTake
from mixhouse.otc.node.results import Fill, NewOrder, PlaceResult
from mixhouse.otc.orders import (
    Announcement,
    InvalidMessage,
    OrderBody,
    SignedOrder,
    check_terms,
    new_nonce,
    parse_model,
    sign_order,
)
from mixhouse.otc.pairs import pair_rules

log = logging.getLogger(__name__)


class UserOrders(Confirmations):
    """The user's operations: place and cancel."""

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
