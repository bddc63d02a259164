"""The take, owner's side (the grant): only the order's owner fills it, in one transaction
holding the order row, and a repeat of the same take gets the same grant."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Row

from mixhouse.audit import AuditEntry, append
from mixhouse.otc import store
from mixhouse.otc.identity import BadSignature
from mixhouse.otc.matching import quote_amount
from mixhouse.otc.node.expiry import Expiry
from mixhouse.otc.node.wire import to_json
from mixhouse.otc.orders import (
    Announcement,
    InvalidMessage,
    SignedOrder,
    check_order,
    parse_model,
)
from mixhouse.otc.pairs import pair_rules
from mixhouse.otc.protocol import (
    Grant,
    GrantBody,
    TakeReply,
    TakeRequest,
    sign_grant,
    trade_id,
    verify_take,
)
from mixhouse.otc.trades import TradeState

log = logging.getLogger(__name__)


class OwnerSide(Expiry):
    """The owner's side of a take: grant ``min(q, open)`` in one transaction, or refuse."""

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
        return to_json(reply)

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
                conn, target_node=taker.owner, kind="confirm", trade_id=body.trade_id, payload=to_json(confirmation)
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
