"""Refresh and expiry: the owner re-signs its open orders with a later expiry; expired
learned orders are dropped a TTL later."""

from __future__ import annotations

import logging

from mixhouse.audit import seal
from mixhouse.otc import store
from mixhouse.otc.node.antientropy import AntiEntropy

log = logging.getLogger(__name__)


class Expiry(AntiEntropy):
    """The owner's refresh of its open orders and the sweep of expired learned ones."""

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
