"""The take, taker's side: reserve the quantity, record the take, ask the maker's owner,
record the granted fill; an unanswered take stays pending and is re-sent."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Row

from mixhouse.audit import AuditEntry, append
from mixhouse.db.tables import otc_orders
from mixhouse.otc import store
from mixhouse.otc.grenache.errors import PeerUnavailable, RpcError
from mixhouse.otc.identity import BadSignature
from mixhouse.otc.matching import quote_amount
from mixhouse.otc.node.errors import ProtocolViolation
from mixhouse.otc.node.grant import OwnerSide
from mixhouse.otc.node.results import Fill
from mixhouse.otc.node.wire import to_json
from mixhouse.otc.orders import (
    Announcement,
    InvalidMessage,
    SignedOrder,
    check_status,
    parse_model,
)
from mixhouse.otc.pairs import pair_rules
from mixhouse.otc.protocol import (
    Grant,
    TakeBody,
    TakeReply,
    sign_take,
    trade_id,
    verify_grant,
)
from mixhouse.otc.trades import TradeState

log = logging.getLogger(__name__)


class TakerSide(OwnerSide):
    """The taker's side of a take: reserve, ask the owner, record the grant."""

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
                data = await self._request(address, {"action": "take", "args": [to_json(request)]})
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
                payload=to_json(confirmation),
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
