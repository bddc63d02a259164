"""Order distribution: a validated announcement is stored (highest version per order id)
and sent to every peer; what was new is relayed once."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mixhouse.otc import store
from mixhouse.otc.grenache.errors import GrenacheError
from mixhouse.otc.node.base import NodeBase
from mixhouse.otc.node.wire import message_fingerprint, to_json
from mixhouse.otc.orders import (
    Announcement,
    parse_announcement,
)

log = logging.getLogger(__name__)


class Distribution(NodeBase):
    """Ingest validated announcements and send them to every peer (relayed once)."""

    def _parse_announcement(self, raw: Any) -> Announcement:
        s = self.settings
        return parse_announcement(raw, now_ms=self.clock(), max_skew_ms=s.max_skew_ms, max_ttl_ms=2 * s.ttl_ms)

    async def ingest(self, ann: Announcement) -> bool:
        """Store a validated foreign announcement; True if it was new (or a newer version)."""
        if ann.order.body.owner == self.node_id:
            return False  # our own order relayed back: our row is the authority
        async with self.engine.begin() as conn:
            accepted = await store.upsert_learned(conn, ann)
        if accepted:
            self._directory[ann.order.body.owner] = ann.status.body.address
            fingerprint = message_fingerprint(to_json(ann))
            if fingerprint is not None:
                self._seen.add(fingerprint)
        return accepted

    async def broadcast(self, ann: Announcement) -> int:
        """Send ``ann`` to every peer; returns how many accepted it as new."""
        payload = {"action": "announce", "args": [to_json(ann)]}
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
