"""The lean path of the two reads clients poll: :class:`FastReads`, in front of the FastAPI app.

Why it exists (issue 14, item 8). ``GET /api/v1/mixes/{id}`` is the route every user polls.
Through FastAPI it cost about 2.5 ms of CPU per request on the 2-core development machine:
a profile of one worker under load (py-spy) spent about a third of it in Starlette's and
FastAPI's middleware, routing and dependency solving and most of the rest in SQLAlchemy's
execution layer and the database round trip, so two workers served about 300-700 req/s.
This layer answers the two polled reads itself, before all of that:

* ``GET /api/v1/mixes/{id}`` from a per-process cache of status bodies
  (:class:`StatusCache`), kept exact by PostgreSQL ``LISTEN``/``NOTIFY``
  (:mod:`mixhouse.api.status_feed`, migration 0015); a miss runs the route's statement on a
  plain psycopg connection of a small ``psycopg_pool`` pool, prepared
  (:func:`mixhouse.mixer.status.fetch_mix_status`: 0.4 ms of CPU where SQLAlchemy's
  execution layer took 1.6), and renders it with the route's own response model;
* ``GET /api/v1/health`` with the route's ``SELECT 1``, on the same pool.

A statement that meets a dead connection (PostgreSQL restarted) is retried once after the
pool has checked its idle connections, as :func:`mixhouse.db.engine.read_first` does; a
request waits at most :data:`POOL_TIMEOUT_SECONDS` for a connection, then answers 503.

It answers only the plain form of these requests: method ``GET``, no query string, no
request body, no ``root_path``, an id without ``/`` or NUL. Everything else, and every other
route, goes to the FastAPI app unchanged, so the request guard (NUL, body size, nesting),
redirects and 405s stay where they are. Its errors are built by the app's own exception
handlers (:mod:`mixhouse.api.problems`: 404, 503 with ``Retry-After`` while the database is
down, opaque 500s), its bodies by the route's response model, and it observes the same
latency histogram (:class:`mixhouse.metrics.RequestMetrics`, by route template).
``tests/test_api_fast.py`` compares its answers with the FastAPI routes' byte for byte. The
OpenAPI document still describes both routes, which stay in the app.

Cache correctness. A body is stored only if no change notification (and no loss or recovery
of the listening connection) arrived while it was being read, so a body read from a snapshot
older than a commit is never kept; a notification evicts the mix's body. While the listening
connection is down the cache is empty and off: every read goes to the database, until the
feed listens again. A status read therefore never returns a body older than the last commit
the process has been notified of; the notification itself arrives within about a
millisecond of the commit on a healthy server.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import structlog
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool
from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from mixhouse.api.health import health_answer
from mixhouse.api.schemas import MixStatusOut
from mixhouse.api.status_feed import EVERY_MIX, MixChangeFeed, mix_digest
from mixhouse.metrics import RequestMetrics
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.status import fetch_mix_status

log = structlog.get_logger(__name__)

STATUS_PREFIX = "/api/v1/mixes/"
HEALTH_PATH = "/api/v1/health"
# The route templates the latency histogram is labelled with (those of the FastAPI routes).
STATUS_TEMPLATE = "/api/v1/mixes/{mix_id}"
HEALTH_TEMPLATE = HEALTH_PATH
STATUS_ROUTE_NAME = "get_mix_status"
# Bodies kept per process (about 2-3 KiB each): the oldest stored is dropped past this.
CACHE_ENTRIES = 20_000
# The lean path's connections per process (besides the engine's and the feed's): a miss or a
# health check holds one for a single statement.
POOL_MIN_SIZE = 2
POOL_MAX_SIZE = 8
# The longest a request waits for a pooled connection (the database down or saturated).
POOL_TIMEOUT_SECONDS = 3.0
# FastAPI renders a response model with the field's TypeAdapter; this is the same adapter.
_STATUS_JSON = TypeAdapter(MixStatusOut)
_JSON = b"application/json"


class StatusCache:
    """Status bodies (JSON bytes) by mix id, for one process; a :class:`FeedSubscriber`.

    Off (empty, storing nothing) until the feed listens. ``generation`` counts the events
    after which a body read earlier may be stale (a change, a loss, a recovery): a read
    takes :meth:`ticket` before it starts and :meth:`put` stores its body only if the
    generation has not moved since.
    """

    def __init__(self, max_entries: int = CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self.enabled = False
        self.generation = 0
        # digest -> (mix id, body): the feed names mixes by digest only.
        self._bodies: dict[str, tuple[str, bytes]] = {}

    def __len__(self) -> int:
        return len(self._bodies)

    def get(self, mix_id: str) -> bytes | None:
        """The stored body of ``mix_id``, or ``None``."""
        entry = self._bodies.get(mix_digest(mix_id))
        if entry is None or entry[0] != mix_id:
            return None
        return entry[1]

    def ticket(self) -> int | None:
        """What :meth:`put` needs to store a body read from now on; ``None`` while off."""
        return self.generation if self.enabled else None

    def put(self, mix_id: str, body: bytes, ticket: int | None) -> bool:
        """Store ``body`` for ``mix_id`` if nothing changed since ``ticket``; whether it did."""
        if ticket is None or ticket != self.generation or not self.enabled:
            return False
        if len(self._bodies) >= self.max_entries:
            del self._bodies[next(iter(self._bodies))]
        self._bodies[mix_digest(mix_id)] = (mix_id, body)
        return True

    def mix_changed(self, digest: str) -> None:
        """Evict the mix with this digest (every mix for :data:`EVERY_MIX`)."""
        self.generation += 1
        if digest == EVERY_MIX:
            self._bodies.clear()
        else:
            self._bodies.pop(digest, None)

    def feed_lost(self) -> None:
        """Changes may go unheard: drop everything and store nothing until :meth:`feed_ready`."""
        self.generation += 1
        self.enabled = False
        self._bodies.clear()

    def feed_ready(self) -> None:
        """Changes are heard again: store from now on (reads begun before may not store)."""
        self.generation += 1
        self._bodies.clear()
        self.enabled = True


def _status_headers(length: int) -> list[tuple[bytes, bytes]]:
    # What the route's JSONResponse sends: content-length, then content-type.
    return [(b"content-length", str(length).encode()), (b"content-type", _JSON)]


async def _send_body(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _status_headers(len(body))})
    await send({"type": "http.response.body", "body": body})


def _plain(scope: Scope) -> bool:
    """Whether the request is one the lean path may answer: no query, no body, no root path."""
    if scope["query_string"] or scope.get("root_path"):
        return False
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return False
    return True


class FastReads:
    """ASGI app answering the polled reads (see the module docstring), the rest by ``app``.

    Args:
        app: the FastAPI app of :func:`mixhouse.api.app.create_app` (its routes, exception
            handlers and ``state.request_metrics`` are used).
        rt: the runtime the app serves.
        database_url: the libpq URI of the lean path's connection pool.
        feed: the change feed keeping the cache exact, or ``None`` for no cache (every
            status read goes to the database).

    :meth:`start` must run before the first request, :meth:`stop` after the last.
    """

    def __init__(self, app: FastAPI, rt: Runtime, database_url: str, feed: MixChangeFeed | None) -> None:
        self.app = app
        self.rt = rt
        self.feed = feed
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            database_url,
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            timeout=POOL_TIMEOUT_SECONDS,
            kwargs={"autocommit": True},
            open=False,
            name="lean-reads",
        )
        self.cache = StatusCache()
        if feed is not None:
            feed.subscribe(self.cache)
        metrics: RequestMetrics | None = getattr(app.state, "request_metrics", None)
        self._duration = None if metrics is None else metrics.duration

    async def start(self) -> None:
        """Open the pool (without waiting for the database) and start the change feed (the
        cache turns on once it listens)."""
        await self.pool.open(wait=False)
        if self.feed is not None:
            await self.feed.start()

    async def stop(self) -> None:
        """Stop the change feed (the cache turns off) and close the pool."""
        if self.feed is not None:
            await self.feed.stop()
        await self.pool.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a plain ``GET`` of a mix status or ``/health``; pass anything else on."""
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            if path.startswith(STATUS_PREFIX):
                mix_id = path[len(STATUS_PREFIX) :]
                if mix_id and "/" not in mix_id and "\x00" not in mix_id and _plain(scope):
                    await self._status(scope, receive, send, mix_id)
                    return
            elif path == HEALTH_PATH and _plain(scope):
                await self._health(send)
                return
        await self.app(scope, receive, send)

    def _observe(self, template: str, status: int, started: float) -> None:
        if self._duration is not None:
            self._duration.labels("GET", template, str(status)).observe(time.perf_counter() - started)

    async def _status(self, scope: Scope, receive: Receive, send: Send, mix_id: str) -> None:
        started = time.perf_counter()
        body = self.cache.get(mix_id)
        if body is None:
            ticket = self.cache.ticket()
            try:
                status = await self._read(mix_id)
            except Exception as exc:
                await self._problem(scope, receive, send, exc, started)
                return
            url = str(self.app.url_path_for(STATUS_ROUTE_NAME, mix_id=mix_id))
            body = _STATUS_JSON.dump_json(MixStatusOut.from_status(status, url))
            self.cache.put(mix_id, body, ticket)
        self._observe(STATUS_TEMPLATE, 200, started)
        await _send_body(send, 200, body)

    async def _read(self, mix_id: str | None) -> dict[str, Any]:
        """The status of ``mix_id`` (``None``: ``SELECT 1``), retried once on a dead connection."""
        for attempt in (1, 2):
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                async with self.pool.connection() as conn:
                    if mix_id is None:
                        await conn.execute("SELECT 1", prepare=True)
                        return {}
                    return await fetch_mix_status(conn, mix_id)
            except psycopg.OperationalError:
                # PoolTimeout (no connection to be had) is one too: not retried.
                if attempt == 2 or conn is None or not conn.broken:
                    raise
                # Others of the pool died with it: replace them before the retry.
                await self.pool.check()
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _problem(self, scope: Scope, receive: Receive, send: Send, exc: Exception, started: float) -> None:
        """Answer ``exc`` with the app's own handler for it (as its exception middleware would)."""
        handlers: dict[Any, Any] = self.app.exception_handlers
        handler = next(handlers[cls] for cls in type(exc).__mro__ if cls in handlers)
        request = Request({**scope, "app": self.app}, receive)
        response = await handler(request, exc)
        self._observe(STATUS_TEMPLATE, response.status_code, started)
        await response(scope, receive, send)

    async def _health(self, send: Send) -> None:
        started = time.perf_counter()
        database = True
        try:
            await self._read(None)
        except Exception:
            log.exception("health check: database unreachable")
            database = False
        # The route's answer (signers included, from the app's shared cache), rendered the same.
        status, body = await health_answer(self.app, database=database)
        self._observe(HEALTH_TEMPLATE, status, started)
        await _send_body(send, status, body.model_dump_json().encode())
