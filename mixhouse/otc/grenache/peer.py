"""A Grenache peer: serves RPC on a port, announces a service on a grape, calls other peers.

Lifecycle: :meth:`GrenachePeer.start` binds the RPC server and starts the announce loop;
:meth:`~GrenachePeer.ready` returns once the first announce succeeded and every grape given
(our own and ``other_grape_urls``) lists our address, so a peer looking up through another grape
finds us (what the Bitfinex prototype could only ``sleep`` for); :meth:`~GrenachePeer.close`
stops announcing, stops accepting, drains in-flight requests and closes every socket and task.
``async with GrenachePeer(...) as peer`` does start + ready, then close.

A grape keeps listing a peer until its announce ages out (120 s), dead or not, so a peer that
refused a connection, timed out or sent an unreadable frame is *suspected*: left out of
:meth:`~GrenachePeer.peers` for a backoff (1 s, doubling per failure up to 60 s), then tried
again; any reply clears it. :meth:`~GrenachePeer.request` itself always tries the address asked.

Calls to peers use an aiohttp client session (keep-alive connections per peer); its pool
stays fast with many calls in flight, where httpx's pool spent most of the time matching
requests to connections (335 calls/s at 32 in flight, against 805 one at a time, in one
process). Grape calls use httpx. A request body over 1 KiB is gzipped (``grc-compress: gzip``,
the reply then comes back gzipped too).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
import uuid
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp
import httpx
import structlog

from mixhouse.otc.grenache.errors import (
    BadFrame,
    GrapeError,
    GrenacheError,
    InvalidPeerAddress,
    PeerUnavailable,
    RpcError,
)
from mixhouse.otc.grenache.frames import (
    COMPRESS_HEADER,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_JSON_DEPTH,
    ERR_TOO_LARGE,
    encode_json,
    gzip_bytes,
    parse_reply,
    read_frame,
)
from mixhouse.otc.grenache.grape import GrapeClient
from mixhouse.otc.grenache.server import DEFAULT_DRAIN_TIMEOUT_S, DEFAULT_MAX_IN_FLIGHT, Handler, RpcServer

__all__ = ["GrenachePeer", "Handler", "NotReady", "parse_address"]

log = structlog.get_logger(__name__)

# grenache-grape 0.9.12 keeps an announce 120 s in the DHT and 60 s in its lookup cache:
# announcing every 20 s survives two lost announces in a row.
DEFAULT_ANNOUNCE_EVERY_S = 20.0
DEFAULT_READY_TIMEOUT_S = 30.0
# A broadcast asks peers() per message; a grape lookup is a DHT query (a few ms). A peer that
# became ready within this window may be missing from a cached answer: peers(fresh=True).
DEFAULT_LOOKUP_CACHE_S = 0.5
MAX_CONNECTIONS_PER_PEER = 32
DEFAULT_HTTP_TIMEOUT_S = 10.0  # each call passes its own; this bounds any other use
SUSPECT_BASE_S = 1.0
SUSPECT_MAX_S = 60.0
GZIP_ABOVE_BYTES = 1024
_ANNOUNCE_RETRY_MAX_S = 5.0


class NotReady(GrenacheError):
    """:meth:`GrenachePeer.ready` gave up: not announced, or not visible on every grape, in time."""


@dataclass
class _Suspicion:
    failures: int
    until: float  # time.monotonic() after which peers() lists the address again


def parse_address(address: str) -> tuple[str, int]:
    """``("127.0.0.1", 1337)`` of ``"127.0.0.1:1337"``.

    Raises:
        InvalidPeerAddress: not a dotted IPv4 address and a port in 1..65535 (a grape's
            lookup only lists those; anything else would make us call an arbitrary URL).
    """
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or len(port_text) > 5:
        raise InvalidPeerAddress(f"not ip:port: {address[:100]!r}")
    try:
        ipaddress.IPv4Address(host)
    except ValueError as exc:
        raise InvalidPeerAddress(f"not ip:port: {address[:100]!r}") from exc
    port = int(port_text)
    if not 0 < port < 65536:
        raise InvalidPeerAddress(f"port out of range: {address[:100]!r}")
    return host, port


class GrenachePeer:
    """One peer of a Grenache network.

    Args:
        grape_url: our grape's API (``http://127.0.0.1:30001``): announces and lookups.
        service: the key announced (``mixhouse:otc:v1`` for OTC nodes).
        handler: answers each incoming request, ``(key, payload) -> data``; raise
            :class:`RpcError` to reply an error.
        host: address the RPC server binds; also the address we call ourselves by when it is
            a concrete one (for 0.0.0.0, 127.0.0.1).
        port: RPC port; 0 picks a free one (:attr:`port` after :meth:`start`).
        announce_every_s: re-announce period (well inside the grape's 120 s peer max age).
        other_grape_urls: grapes :meth:`ready` checks too, and :meth:`peers` falls back to.
        max_body_bytes: cap on request bodies we accept and reply bodies we read, before and
            after gunzip.
        max_json_depth: deepest JSON nesting accepted, both ways.
        drain_timeout_s: how long :meth:`close` waits for in-flight requests.
        lookup_cache_s: how long :meth:`peers` reuses a non-empty lookup (0: never).
        max_in_flight: incoming requests answered at once; more get ``ERR_SERVICE_BUSY``.

    Attributes:
        port: the bound RPC port after :meth:`start`.
        address: ``"127.0.0.1:<port>"``, as a grape lists us.
        service: the announced key.
    """

    def __init__(
        self,
        *,
        grape_url: str,
        service: str,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        announce_every_s: float = DEFAULT_ANNOUNCE_EVERY_S,
        other_grape_urls: Sequence[str] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
        drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
        lookup_cache_s: float = DEFAULT_LOOKUP_CACHE_S,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if announce_every_s <= 0:
            raise ValueError("announce_every_s must be positive")
        self.service = service
        self.port = port
        self._public_host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - compared, not bound
        self.address = f"{self._public_host}:{port}"
        self._announce_every_s = announce_every_s
        self._lookup_cache_s = lookup_cache_s
        self._max_body_bytes = max_body_bytes
        self._max_json_depth = max_json_depth
        self._grape_urls = [grape_url, *(u for u in other_grape_urls if u != grape_url)]
        self._server = RpcServer(
            handler,
            host=host,
            port=port,
            max_body_bytes=max_body_bytes,
            max_json_depth=max_json_depth,
            drain_timeout_s=drain_timeout_s,
            max_in_flight=max_in_flight,
        )
        self._http: httpx.AsyncClient | None = None  # for the grapes
        self._session: aiohttp.ClientSession | None = None  # for the peers
        self._grapes: list[GrapeClient] = []
        self._announce_task: asyncio.Task[None] | None = None
        self._announced = asyncio.Event()
        self._suspects: dict[str, _Suspicion] = {}
        self._state = "new"  # new -> started -> closed

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the RPC server and begin announcing :attr:`service` (first announce at once).

        Raises:
            GrenacheError: started before.
            OSError: the port is taken.
        """
        if self._state != "new":
            raise GrenacheError(f"peer already {self._state}")
        self._state = "started"
        await self._server.start()
        self.port = self._server.port
        self.address = f"{self._public_host}:{self.port}"
        self._http = httpx.AsyncClient(trust_env=False, timeout=DEFAULT_HTTP_TIMEOUT_S)
        # Raw bodies: the frame's gzip is ours to undo (and to cap), not the library's.
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=DEFAULT_HTTP_TIMEOUT_S),
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=MAX_CONNECTIONS_PER_PEER),
        )
        # The grape clients share this client's connection pool.
        self._grapes = [GrapeClient(url, client=self._http, cache_s=self._lookup_cache_s) for url in self._grape_urls]
        self._announce_task = asyncio.create_task(self._announce_loop(), name=f"grenache-announce-{self.port}")

    async def _announce_loop(self) -> None:
        retry_s = 0.05
        while True:
            try:
                await self._grapes[0].announce(self.service, self.port)
            except GrapeError as exc:
                log.warning("grenache_announce_failed", grape=self._grape_urls[0], error=str(exc)[:200])
                await asyncio.sleep(retry_s)  # retry soon, backing off, while the grape is away
                retry_s = min(retry_s * 2, _ANNOUNCE_RETRY_MAX_S, self._announce_every_s)
                continue
            retry_s = 0.05
            self._announced.set()
            await asyncio.sleep(self._announce_every_s)  # the announce period itself

    @property
    def announcing(self) -> bool:
        """Whether the announce loop runs (from :meth:`start` to :meth:`close`; it outlives
        failing announces, retrying them)."""
        return self._announce_task is not None and not self._announce_task.done()

    async def ready(self, *, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> None:
        """Return once announced and listed by a fresh lookup on every grape we were given.

        Raises:
            NotReady: not so within ``timeout_s``.
            GrenacheError: :meth:`start` was not called, or the peer is closed.
        """
        if self._state != "started" or self._announce_task is None:
            raise GrenacheError(f"peer is {self._state}, not started")
        deadline = time.monotonic() + timeout_s
        waiter = asyncio.ensure_future(self._announced.wait())
        try:
            done, _pending = await asyncio.wait(
                {waiter, self._announce_task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if self._announce_task in done:
            raise NotReady(f"announce loop ended: {self._announce_task.exception()!r}")
        if waiter not in done:
            raise NotReady(f"{self.service} not announced on {self._grape_urls[0]} within {timeout_s} s")
        for grape in self._grapes:
            delay = 0.01
            last = "no lookup yet"
            while True:
                try:
                    if self.address in await grape.lookup(self.service, use_cache=False):
                        break
                    last = "not listed yet"
                except GrapeError as exc:
                    last = str(exc)[:200]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NotReady(f"{self.address} not visible on {grape.url} within {timeout_s} s: {last}")
                await asyncio.sleep(min(delay, remaining))  # poll interval under the deadline
                delay = min(delay * 2, 0.2)

    async def close(self) -> None:
        """Stop announcing, stop accepting, drain in-flight requests (up to the drain timeout),
        close the server socket, every connection and the HTTP client. Idempotent.

        The grapes keep listing us until the announce ages out; other peers suspect us meanwhile.
        """
        if self._state == "closed":
            return
        self._state = "closed"
        task, self._announce_task = self._announce_task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await self._server.close()
        if self._session is not None:
            await self._session.close()
        if self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        try:
            await self.ready()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- discovery -------------------------------------------------------------------------

    async def lookup(self, key: str, *, fresh: bool = False) -> list[str]:
        """Who serves ``key``, from our grape or, when it fails, the next grape given
        (``fresh``: bypass the short positive cache).

        Raises:
            GrapeError: every grape failed (the first one's error).
            GrenacheError: the peer is not started.
        """
        if not self._grapes:
            raise GrenacheError("peer not started")
        first_error: GrapeError | None = None
        for grape in self._grapes:
            try:
                return await grape.lookup(key, use_cache=not fresh)
            except GrapeError as exc:
                first_error = first_error or exc
        assert first_error is not None
        raise first_error

    async def peers(self, *, fresh: bool = False) -> list[str]:
        """The other peers serving :attr:`service`: a lookup minus ourselves, minus addresses
        that are not ``IPv4:port``, minus suspected peers still in their backoff. ``fresh``
        asks the grape now instead of reusing a lookup younger than ``lookup_cache_s``.

        Raises:
            GrapeError: no grape answered.
        """
        found = await self.lookup(self.service, fresh=fresh)
        now = time.monotonic()
        result: list[str] = []
        for address in dict.fromkeys(found):
            if address == self.address:
                continue
            suspicion = self._suspects.get(address)
            if suspicion is not None and suspicion.until > now:
                continue
            try:
                parse_address(address)
            except InvalidPeerAddress:
                continue
            result.append(address)
        return result

    def suspected(self) -> list[str]:
        """Addresses in their suspicion backoff now."""
        now = time.monotonic()
        return [address for address, s in self._suspects.items() if s.until > now]

    def _suspect(self, address: str) -> None:
        previous = self._suspects.get(address)
        failures = previous.failures + 1 if previous else 1
        backoff = min(SUSPECT_MAX_S, SUSPECT_BASE_S * 2 ** min(failures - 1, 16))
        self._suspects[address] = _Suspicion(failures, time.monotonic() + backoff)

    # -- calls -----------------------------------------------------------------------------

    async def request(
        self,
        address: str,
        payload: Any,
        *,
        timeout_s: float = 5.0,
        key: str | None = None,
        compress: bool | None = None,
    ) -> Any:
        """One RPC ``[rid, key, payload]`` to ``address``; returns the reply's data.

        Args:
            address: ``"127.0.0.1:1337"``, as :meth:`peers` lists.
            payload: any JSON value (OTC: ``{"action": str, "args": [...]}``).
            timeout_s: for the whole call: connect, send, reply.
            key: the Grenache key addressed (default :attr:`service`).
            compress: gzip both bodies; default only when the request body is over 1 KiB.

        Raises:
            RpcError: the peer replied with an error (``.message``).
            PeerUnavailable: refused, timed out (the peer may still have acted on the
                request), or the reply was not a readable frame; the peer is now suspected.
            InvalidPeerAddress: ``address`` is not ``IPv4:port``; nothing was sent.
            GrenacheError: the peer is not started or is closed.
            TypeError, ValueError: ``payload`` is not JSON-serialisable.
        """
        if self._session is None or self._state != "started":
            raise GrenacheError(f"peer is {self._state}, not started")
        host, port = parse_address(address)
        rid = str(uuid.uuid4())
        body = encode_json([rid, key or self.service, payload])
        gzipped = compress if compress is not None else len(body) > GZIP_ABOVE_BYTES
        if gzipped:
            body = gzip_bytes(body)
        headers = {COMPRESS_HEADER: "gzip" if gzipped else "none", "Content-Type": "application/json"}
        try:
            async with asyncio.timeout(timeout_s):
                raw = await self._post(f"http://{host}:{port}/", body, headers, timeout_s)
            value = read_frame(
                raw, compressed=gzipped, max_body_bytes=self._max_body_bytes, max_depth=self._max_json_depth
            )
            err, data = parse_reply(value, rid)
        except (aiohttp.ClientError, OSError, TimeoutError, BadFrame) as exc:
            self._suspect(address)
            raise PeerUnavailable(f"{address}: {type(exc).__name__} {str(exc)[:200]}") from exc
        self._suspects.pop(address, None)
        if err is not None:
            raise RpcError(err)
        return data

    async def _post(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> bytes:
        assert self._session is not None
        chunks: list[bytes] = []
        total = 0
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self._session.post(url, data=body, headers=headers, timeout=timeout) as response:
            async for chunk in response.content.iter_any():
                total += len(chunk)
                if total > self._max_body_bytes:
                    raise BadFrame(ERR_TOO_LARGE, f"reply over {self._max_body_bytes} bytes", status=413)
                chunks.append(chunk)
        return b"".join(chunks)
