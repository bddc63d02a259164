"""Engines and connection URLs.

One async SQLAlchemy engine per process (psycopg 3 driver). Data-access functions take an
``AsyncConnection`` and never commit: the service layer opens the transaction
(``async with engine.begin() as conn``) and owns it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Executable, Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mixhouse.config import Settings
from mixhouse.db.embedded import start_embedded


def resolve_database_url(settings: Settings) -> str:
    """The libpq URI of the database: ``settings.database_url``, or a started embedded server."""
    if settings.database_url:
        return settings.database_url
    return start_embedded(settings.data_dir)


def sqlalchemy_url(libpq_url: str) -> str:
    """Turn ``postgresql://...`` into the SQLAlchemy URL for the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if libpq_url.startswith(prefix):
            return "postgresql+psycopg://" + libpq_url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {libpq_url!r}")


def libpq_url(url: str) -> str:
    """Turn a SQLAlchemy URL back into a plain libpq URI (for procrastinate and psycopg)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def make_engine(
    database_url: str, *, pool_size: int = 10, pre_ping: bool = True, max_overflow: int | None = None
) -> AsyncEngine:
    """An async engine over psycopg 3 for a libpq URI.

    The pool keeps ``pool_size`` connections and opens up to ``max_overflow`` more (default
    ``pool_size``) when they are all taken; an overflow connection is closed when it is given
    back, so a process whose concurrency stays above ``pool_size`` connects and disconnects
    all the time (a PostgreSQL backend started per request: the API's reads spent most of
    their CPU there). The API keeps a larger pool and no overflow; its requests wait for a
    connection instead.

    ``pre_ping`` tests every connection taken from the pool with a round trip (``BEGIN`` and
    ``SELECT 1``) before handing it out, so a connection that died with a PostgreSQL restart
    is replaced instead of failing the caller. The HTTP API turns it off: it doubled the
    round trips of a status read, and its reads go through :func:`read_first`, which retries
    on a fresh connection instead (SQLAlchemy then discards every connection of the pool
    older than the dead one, so one failure renews the whole pool).
    """
    return create_async_engine(
        sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_pre_ping=pre_ping,
    )


async def read_first(
    engine: AsyncEngine, statement: Executable, parameters: Mapping[str, Any] | None = None
) -> Row[Any] | None:
    """The first row of one read-only ``statement`` (with its bound ``parameters``), or
    ``None`` when it returns no row.

    The statement runs alone in autocommit: one round trip, no ``BEGIN`` and ``ROLLBACK``
    around it (a single statement sees one snapshot anyway). It is retried once on a new
    connection when the pooled one turns out dead (PostgreSQL restarted, the server closed
    it), which is safe because it only reads.

    Raises:
        sqlalchemy.exc.DBAPIError: the database refused the statement or stayed unreachable
            on the second attempt (``OperationalError`` when it cannot be reached).
    """
    for attempt in (1, 2):
        try:
            async with engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                return (await conn.execute(statement, parameters)).first()
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def with_database(url: str, dbname: str) -> str:
    """``url`` (a libpq URI, TCP or unix-socket form) with its database name replaced."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))
