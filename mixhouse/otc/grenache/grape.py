"""A client of a Grape's HTTP API: announce a service, look up who serves it.

``POST http://<grape>:<aph>/announce`` with ``{"rid": uuid, "data": [key, port]}`` answers the
number of DHT nodes that stored the announce; ``/lookup`` with ``{"rid", "data": key}`` answers
``["ip:port", ...]``. A grape reports errors as HTTP 200 with a JSON *string*
(``"No nodes to query"``, ``"ERR_GRAPE_LOOKUP"``) or a plain-text 500/413, so every reply is
type-checked. The announced IP is the one the grape sees (its own host on loopback), so a
service announces through a grape on its own host. An announce lives ``dht_peer_maxAge``
(120 s by default in grenache-grape 0.9.12) in the DHT; nothing removes it earlier.
Source: bitfinexcom/grenache-grape ``lib/Grape.js`` (``transportHttp``, ``handlePeer*``).

Lookups that found peers are kept for ``cache_s`` (callers such as a broadcast ask often);
an empty result is never kept, unlike Node's Link, which caches it for 10 s and so misses a
peer that announced just after. (The grape itself coalesces concurrent lookups of one key.)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx

from mixhouse.otc.grenache.errors import GrapeError

# A grape whose DHT partner died answers an announce after ~4.6 s and lookups after 2.5-5 s.
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_CACHE_S = 1.0
MAX_REPLY_BYTES = 1 << 20  # a lookup lists at most 100 peers (record-cache's get(ih, 100))


class GrapeClient:
    """Announce and lookup on one grape.

    Args:
        url: the grape's API base URL, ``http://127.0.0.1:30001``.
        client: an httpx client to use (not closed by :meth:`aclose`); default our own.
        timeout_s: per call.
        cache_s: how long a non-empty lookup result is reused; 0 disables the cache.
    """

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        cache_s: float = DEFAULT_CACHE_S,
    ) -> None:
        self.url = url.rstrip("/")
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(trust_env=False, timeout=timeout_s)
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, list[str]]] = {}

    async def aclose(self) -> None:
        """Close the httpx client if it is ours."""
        if self._own_client:
            await self._client.aclose()

    async def _call(self, method: str, data: Any) -> Any:
        body = {"rid": str(uuid.uuid4()), "data": data}
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._client.post(f"{self.url}/{method}", json=body, timeout=self._timeout_s)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise GrapeError(f"grape {self.url} {method}: {type(exc).__name__} {exc}") from exc
        if len(response.content) > MAX_REPLY_BYTES:
            raise GrapeError(f"grape {self.url} {method}: reply of {len(response.content)} bytes")
        if response.status_code != 200:
            raise GrapeError(f"grape {self.url} {method}: HTTP {response.status_code} {response.text[:200]!r}")
        try:
            return response.json()
        except ValueError as exc:
            raise GrapeError(f"grape {self.url} {method}: not JSON: {response.text[:200]!r}") from exc

    async def announce(self, key: str, port: int) -> int:
        """Announce that ``port`` on this host serves ``key``.

        Returns:
            how many DHT nodes stored the announce (>= 0).

        Raises:
            GrapeError: the grape is unreachable or answered an error string.
            ValueError: ``port`` is not in 1..65535.
        """
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range")
        reply = await self._call("announce", [key, port])
        if isinstance(reply, bool) or not isinstance(reply, int):
            raise GrapeError(f"grape {self.url} announce {key!r}: {reply!r}")
        return reply

    async def lookup(self, key: str, *, use_cache: bool = True) -> list[str]:
        """Who serves ``key``: ``["127.0.0.1:1337", ...]`` (as the grape lists them, unchecked).

        Args:
            use_cache: reuse a non-empty result younger than ``cache_s``, and keep this one
                (False: ask now, keep nothing: a poll must not hold back other callers).

        Raises:
            GrapeError: the grape is unreachable or answered an error or a non-list.
        """
        if use_cache and self._cache_s > 0:
            hit = self._cache.get(key)
            if hit is not None and time.monotonic() - hit[0] < self._cache_s:
                return list(hit[1])
        reply = await self._call("lookup", key)
        if not isinstance(reply, list) or not all(isinstance(item, str) for item in reply):
            raise GrapeError(f"grape {self.url} lookup {key!r}: {reply!r}")
        found: list[str] = reply
        if not use_cache:
            return list(found)
        if found:
            self._cache[key] = (time.monotonic(), found)
        else:
            self._cache.pop(key, None)  # an empty answer is never kept, nor an older full one
        return list(found)
