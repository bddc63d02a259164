"""Trade confirmations: each side confirms a trade to the other, durably, retried from
the outbox until the other party's signed acknowledgement."""

from __future__ import annotations

import logging
from typing import Any

from mixhouse.audit import append
from mixhouse.otc import store
from mixhouse.otc.grenache.errors import GrenacheError, PeerUnavailable
from mixhouse.otc.identity import BadSignature
from mixhouse.otc.node.take import TakerSide
from mixhouse.otc.orders import (
    InvalidMessage,
    check_order,
    parse_model,
)
from mixhouse.otc.protocol import (
    Confirmation,
    ack_digest,
    check_ack,
    verify_confirmation,
)

log = logging.getLogger(__name__)


class Confirmations(TakerSide):
    """Trade confirmations in and out, and the retry round (outbox, pending takes)."""

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
