"""A unit of work: one DB transaction with the audit entries and jobs it produces.

Every state change of a mix, deposit or send runs inside a :func:`unit`: the row updates, the
jobs they need and their audit entries commit together. Jobs and audit entries are written at
the end, just before COMMIT. Audit entries take no lock: they are inserted unchained and the
sealer (:func:`mixhouse.audit.seal`) chains them once the transaction has ended, so audited
units commit in parallel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mixhouse import audit, jobs


@dataclass(slots=True)
class Unit:
    """The open transaction and what it will append on commit."""

    conn: AsyncConnection
    entries: list[audit.AuditEntry] = field(default_factory=list)
    pending_jobs: list[jobs.JobRequest] = field(default_factory=list)

    def audit(self, entry: audit.AuditEntry) -> None:
        """Append ``entry`` to the audit log when this unit commits."""
        self.entries.append(entry)

    def defer(self, job: jobs.JobRequest) -> None:
        """Enqueue ``job`` when this unit commits."""
        self.pending_jobs.append(job)


@asynccontextmanager
async def unit(engine: AsyncEngine) -> AsyncIterator[Unit]:
    """Open a transaction; on normal exit flush jobs and audit entries, then COMMIT.

    Any exception rolls everything back, the row changes included.
    """
    async with engine.begin() as conn:
        work = Unit(conn)
        yield work
        await jobs.defer(conn, work.pending_jobs)
        await audit.append(conn, work.entries)
