"""Anti-entropy: a digest (order ids and versions) from each peer, then the orders we lack."""

from __future__ import annotations

import logging

from mixhouse.otc import store
from mixhouse.otc.grenache.errors import GrenacheError
from mixhouse.otc.node.distribution import Distribution
from mixhouse.otc.node.settings import MAX_DIGEST, MAX_FETCH
from mixhouse.otc.orders import (
    InvalidMessage,
)

log = logging.getLogger(__name__)


class AntiEntropy(Distribution):
    """Digest exchange with every peer; fetch what we lack or hold older."""

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
