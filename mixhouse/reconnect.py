"""Getting back to PostgreSQL after it went away: which errors mean that, backoff, waiting.

The worker (:func:`mixhouse.app.worker.run_worker`) uses these to outlive a PostgreSQL restart or a
network cut: procrastinate stops its worker when a side task (the LISTEN connection, the
heartbeat, the periodic deferrer) loses the database ("Side task listener failed ... stopping
worker"), and fetching jobs or recording their outcome raises.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import procrastinate.exceptions
import psycopg
import psycopg_pool
import structlog
from sqlalchemy.exc import SQLAlchemyError

log = structlog.get_logger(__name__)

DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    procrastinate.exceptions.ConnectorException,  # procrastinate's wrapper of psycopg errors
    psycopg.Error,
    psycopg_pool.PoolTimeout,
    SQLAlchemyError,  # the engine's (recovery, the tasks' own transactions)
    OSError,  # sockets, DNS
)
"""What losing the database raises, through each layer the worker uses."""


def backoff_delays(*, first_seconds: float, max_seconds: float, rng: random.Random | None = None) -> Iterator[float]:
    """Exponential backoff with jitter: delays ``first_seconds * 2**n`` capped at
    ``max_seconds``, each drawn in ``[delay / 2, delay]`` so that many workers that lost the
    same server do not reconnect in step. Endless.

    Args:
        first_seconds: the first delay's upper bound (> 0).
        max_seconds: the largest delay.
        rng: the random source (``random.SystemRandom`` by default).
    """
    draw = rng or random.SystemRandom()
    ceiling = first_seconds
    while True:
        yield draw.uniform(ceiling / 2, ceiling)
        ceiling = min(ceiling * 2, max_seconds)


async def wait_for_database(conninfo: str, delays: Iterator[float], *, connect_timeout_seconds: int = 5) -> int:
    """Return once a new connection to ``conninfo`` answers ``SELECT 1``; between failed
    attempts wait the next of ``delays``. Never logs ``conninfo`` (it may hold a password).

    Returns:
        How many attempts failed before it answered.

    Raises:
        asyncio.CancelledError: cancelled while waiting (the process is stopping).
    """
    failures = 0
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo, connect_timeout=connect_timeout_seconds)
            async with conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, OSError) as exc:
            failures += 1
            delay = next(delays)
            log.warning(
                "database unreachable, retrying",
                attempt=failures,
                retry_in_seconds=round(delay, 2),
                error=f"{type(exc).__name__}: {exc}".strip(),
            )
            await asyncio.sleep(delay)
        else:
            return failures
