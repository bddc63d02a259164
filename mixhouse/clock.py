"""Time, for every feature: one definition of "now" (timezone-aware UTC, what every timestamp
column stores), so that features need not import one another for it."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)
