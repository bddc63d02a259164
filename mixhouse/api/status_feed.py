"""Which mixes changed, as PostgreSQL commits them: :class:`MixChangeFeed`.

Migration 0015 puts triggers on the three tables a mix's status reads (``mixes``,
``deposits``, ``sends`` of kind payout) that ``NOTIFY`` the channel :data:`CHANNEL` with the
changed mix's :func:`mix_digest`; PostgreSQL delivers a notification when the writing
transaction commits, never before, and never for a rolled-back one. A ``TRUNCATE`` of one
of those tables notifies :data:`EVERY_MIX`.

The payload is a digest, not the mix id: the id is the only handle on a mix (a bearer
secret), and a notification is visible to every session listening on the channel. Two
mixes sharing a digest (64 bits) only cost an extra eviction.

The feed keeps one listening connection per process and tells its subscribers
(:class:`FeedSubscriber`) what changed. When that connection is lost nothing tells which
changes were missed, so subscribers hear :meth:`FeedSubscriber.feed_lost` at once and
:meth:`FeedSubscriber.feed_ready` only once a new connection listens again (reconnected with
backoff, up to :data:`MAX_BACKOFF_SECONDS` apart). The API's status cache
(:mod:`mixhouse.api.fast_status`) is the first subscriber; a page streaming a mix's status
(server-sent events) can subscribe too instead of polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import Protocol

import psycopg
import structlog

log = structlog.get_logger(__name__)

# The channel of migration 0015's triggers.
CHANNEL = "mixhouse_mix_changed"
# The payload of a TRUNCATE: every mix may have changed.
EVERY_MIX = "*"
# Hex digits of md5(mix id) sent as the payload (64 bits).
DIGEST_CHARS = 16
FIRST_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 5.0
# TCP keepalives on the listening connection, seconds: a connection that died without a
# FIN (a partition, a host gone) is noticed in about IDLE + INTERVAL * COUNT.
KEEPALIVES_IDLE_SECONDS = 5
KEEPALIVES_INTERVAL_SECONDS = 2
KEEPALIVES_COUNT = 3


def mix_digest(mix_id: str) -> str:
    """The payload migration 0015's triggers send for ``mix_id``: ``left(md5(id), 16)``, hex."""
    return hashlib.md5(mix_id.encode(), usedforsecurity=False).hexdigest()[:DIGEST_CHARS]


class FeedSubscriber(Protocol):
    """What :class:`MixChangeFeed` calls, on the event loop, never concurrently."""

    def mix_changed(self, digest: str) -> None:
        """A transaction touching the mix with this :func:`mix_digest` committed
        (``digest`` is :data:`EVERY_MIX` after a ``TRUNCATE``)."""

    def feed_lost(self) -> None:
        """The listening connection is gone: changes from now on may go unheard."""

    def feed_ready(self) -> None:
        """The feed listens: every change committed from now on will be heard."""


class MixChangeFeed:
    """One ``LISTEN`` connection on ``database_url`` (a libpq URI), with reconnection.

    Subscribers are told ``feed_lost`` before the first connection too: until
    ``feed_ready``, nothing is heard.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._subscribers: list[FeedSubscriber] = []
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def subscribe(self, subscriber: FeedSubscriber) -> None:
        """Add ``subscriber`` (see :class:`FeedSubscriber`); call before :meth:`start`."""
        self._subscribers.append(subscriber)

    async def start(self) -> None:
        """Start listening in a background task; returns at once (the task reconnects by itself)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mix-change-feed")

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._lost()

    def _lost(self) -> None:
        self.connected.clear()
        for subscriber in self._subscribers:
            subscriber.feed_lost()

    async def _run(self) -> None:
        backoff = FIRST_BACKOFF_SECONDS
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database_url,
                    autocommit=True,
                    keepalives=1,
                    keepalives_idle=KEEPALIVES_IDLE_SECONDS,
                    keepalives_interval=KEEPALIVES_INTERVAL_SECONDS,
                    keepalives_count=KEEPALIVES_COUNT,
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    backoff = FIRST_BACKOFF_SECONDS
                    self.connected.set()
                    for subscriber in self._subscribers:
                        subscriber.feed_ready()
                    async for note in conn.notifies():
                        for subscriber in self._subscribers:
                            subscriber.mix_changed(note.payload)
            except psycopg.Error as exc:
                # The server's message names the server, never a mix: safe to log.
                log.warning("mix change feed lost; reconnecting", kind=type(exc).__name__, error=str(exc))
            self._lost()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
