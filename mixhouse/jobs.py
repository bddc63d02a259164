"""Durable jobs on procrastinate, enqueued inside our own transactions.

A state change and the jobs it needs commit together or not at all: :func:`defer` inserts
into procrastinate's queue through its SQL function ``procrastinate_defer_jobs_v1`` on the
caller's connection (a transactional outbox with no outbox table). Workers wake through the
LISTEN/NOTIFY trigger procrastinate installs on that table.

Task names are the contract between :func:`defer` and the worker: each feature registers its own
tasks (:mod:`mixhouse.mixer.tasks`, :mod:`mixhouse.wallets.tasks`) on the worker's app
(:mod:`mixhouse.app.worker`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from mixhouse.errors import ConfigError

QUEUE = "mixhouse"

TASK_EXECUTE_SEND = "execute_send"
TASK_SCAN_CHAIN = "scan_chain"
TASK_RECONCILE = "reconcile"
TASK_PAYOUT_ROUND = "payout_round"


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A job to enqueue.

    Attributes:
        task_name: one of the ``TASK_*`` names.
        args: JSON-serialisable keyword arguments of the task.
        scheduled_at: earliest run time (aware datetime), ``None`` for now.
        lock: jobs sharing a lock never run at the same time (procrastinate semantics).
    """

    task_name: str
    args: dict[str, Any]
    scheduled_at: datetime | None = None
    lock: str | None = None


_DEFER_SQL = text(
    """
    SELECT procrastinate_defer_jobs_v1(
        ARRAY(
            SELECT ROW(q, t, 0, l, NULL, a::jsonb, s)::procrastinate_job_to_defer_v1
            FROM unnest(CAST(:queues AS text[]), CAST(:tasks AS text[]), CAST(:locks AS text[]),
                        CAST(:args AS text[]), CAST(:scheduled AS timestamptz[]))
                 AS j(q, t, l, a, s)
        )
    )
    """
)


async def defer(conn: AsyncConnection, jobs: list[JobRequest]) -> None:
    """Enqueue ``jobs`` in the caller's open transaction (one round trip)."""
    if not jobs:
        return
    await conn.execute(
        _DEFER_SQL,
        {
            "queues": [QUEUE] * len(jobs),
            "tasks": [j.task_name for j in jobs],
            "locks": [j.lock for j in jobs],
            "args": [json.dumps(j.args) for j in jobs],
            "scheduled": [j.scheduled_at for j in jobs],
        },
    )


def send_job(send_id: int, at: datetime | None = None) -> JobRequest:
    """The job that advances send ``send_id`` through its state machine."""
    return JobRequest(TASK_EXECUTE_SEND, {"send_id": send_id}, scheduled_at=at, lock=f"send:{send_id}")


def every_seconds(seconds: int) -> str:
    """A procrastinate cron (croniter's 6-field form, where the seconds field is the LAST one)
    that fires every ``seconds`` seconds.

    ``"*/5 * * * * *"`` reads as "every second of every fifth minute": periodic tasks written so
    ran each second for one minute and then not at all for four (a scan, a payout round, a
    reconciliation stopped for minutes at a time).

    Raises:
        ConfigError: an interval that a cron cannot express (not 1-59 s, nor whole minutes 1-59).
    """
    if 1 <= seconds < 60:
        return f"* * * * * */{seconds}"
    if seconds % 60 == 0 and 1 <= seconds // 60 < 60:
        return f"*/{seconds // 60} * * * * 0"
    raise ConfigError(f"a periodic interval of {seconds} s cannot be scheduled: use 1-59 s or whole minutes")
