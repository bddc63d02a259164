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

from mixhouse.errors import MixhouseError
from mixhouse.otc.node.errors import OrderNotFound, OrderNotOpen, PostOnlyWouldTake, ProtocolViolation
from mixhouse.otc.node.handler import RpcHandler
from mixhouse.otc.node.results import Fill, NewOrder, PlaceResult
from mixhouse.otc.node.settings import MAX_DIGEST, MAX_FETCH, NodeSettings, Transport, now_ms


class OtcNode(RpcHandler):
    """One OTC peer's logic over its own database; the transport is attached after.

    Args:
        key: the node's identity key (its id owns its orders).
        engine: the node's own database.
        settings: timers and limits.
        clock: ms since the epoch (tests keep the real one; the order times are signed).
    """

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


__all__ = [
    "MAX_DIGEST",
    "MAX_FETCH",
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
