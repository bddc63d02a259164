"""Engines and connection URLs.

One async SQLAlchemy engine per process (psycopg 3 driver). Data-access functions take an
``AsyncConnection`` and never commit: the service layer opens the transaction
(``async with engine.begin() as conn``) and owns it.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

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


def make_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine over psycopg 3 for a libpq URI."""
    return create_async_engine(
        sqlalchemy_url(database_url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )


def with_database(url: str, dbname: str) -> str:
    """``url`` (a libpq URI, TCP or unix-socket form) with its database name replaced."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))
