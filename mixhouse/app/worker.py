"""The worker process: every feature's procrastinate tasks on one app (the mixer's scans, sends,
rounds and reconciliation, :mod:`mixhouse.mixer.tasks`; wallet sync, :mod:`mixhouse.wallets.tasks`)
and the platform's own (audit sealing and checkpoints, recovery).

Workers coordinate only through PostgreSQL (procrastinate fetches jobs with
``SELECT ... FOR UPDATE SKIP LOCKED``), so running more of them, on more machines, is adding
processes pointed at the same database. Jobs for one send share the lock ``send:<id>`` and
never run concurrently.

The ``seal_audit`` task chains new audit entries every second (:func:`mixhouse.audit.seal`).

Database outages: :func:`run_worker` outlives them, reconnecting with backoff.

Recovery: a worker killed mid-job leaves its job ``doing``; the ``recover`` task retries jobs
of workers whose heartbeat stopped, and re-enqueues any unfinished send that has no job
waiting (belt and braces: a send is never forgotten).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import procrastinate
import procrastinate.worker
import structlog

from mixhouse import audit, audit_anchor
from mixhouse.jobs import QUEUE, every_seconds
from mixhouse.mixer.pool_rotation import follow_pool_generations
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.tasks import register_mixer_tasks, requeue_orphan_sends
from mixhouse.reconnect import DATABASE_ERRORS, backoff_delays, wait_for_database
from mixhouse.wallets.tasks import register_wallet_tasks

log = structlog.get_logger(__name__)

# A worker incarnation that ran this long was healthy: the next outage starts a fresh backoff.
_HEALTHY_RUN_SECONDS = 60.0


def create_job_app(rt: Runtime, conninfo: str, *, scan_between_ticks: bool = True) -> procrastinate.App:
    """A procrastinate App with every feature's tasks (they close over ``rt``: no module-level
    state) and the platform's own: audit sealing and checkpoints, recovery.

    Args:
        rt: the process's runtime.
        conninfo: libpq URI of the database (the same one ``rt.engine`` uses).
        scan_between_ticks: see :func:`mixhouse.mixer.tasks.register_mixer_tasks`.
    """
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))
    register_mixer_tasks(app, rt, scan_between_ticks=scan_between_ticks)
    # One scanning engine per node for both features: a block the deposit scans read is not
    # fetched again by wallet sync (and the other way round).
    register_wallet_tasks(app, rt.engine, rt.settings, watches=rt.chain_watches())

    # Chains the audit entries committed since the last tick. If another sealer holds the lock
    # (a second worker, `mixhouse audit verify`), this tick does nothing: that one seals them.
    @app.periodic(cron="* * * * * *", periodic_id="seal_audit")
    @app.task(name="seal_audit", queue=QUEUE, queueing_lock="seal_audit")
    async def seal_audit_task(timestamp: int) -> None:  # noqa: ARG001 - procrastinate passes the tick
        await audit.seal(rt.engine, wait=False)

    key_secret, checkpoint_dir = rt.settings.audit_checkpoint_key, rt.settings.audit_checkpoint_dir
    if key_secret is not None and checkpoint_dir is not None:
        key = audit_anchor.signing_key(key_secret.get_secret_value())
        checkpoint_every = every_seconds(rt.settings.audit_checkpoint_interval_seconds)

        # Signed checkpoints of the chain head, for the operator to keep outside the database.
        @app.periodic(cron=checkpoint_every, periodic_id="audit_checkpoint")
        @app.task(name="audit_checkpoint", queue=QUEUE, queueing_lock="audit_checkpoint")
        async def audit_checkpoint_task(timestamp: int) -> None:  # noqa: ARG001 - procrastinate passes the tick
            async with rt.engine.connect() as conn:
                checkpoint = await audit_anchor.make_checkpoint(conn, key)
            audit_anchor.write_checkpoint(checkpoint_dir, checkpoint)

    @app.periodic(cron="* * * * * *", periodic_id="recover")
    @app.task(name="recover", queue=QUEUE, queueing_lock="recover")
    async def recover_task(timestamp: int) -> None:  # noqa: ARG001 - procrastinate passes the tick
        await recover(app, rt)

    return app


async def recover(app: procrastinate.App, rt: Runtime, *, idle_seconds: float = 10.0) -> int:
    """Retry jobs of dead workers and re-enqueue sends that have no job.

    Returns:
        How many jobs were retried or enqueued.
    """
    count = 0
    stalled = await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=rt.settings.worker_stalled_after_seconds)
    for job in stalled:
        log.warning("retrying a job of a dead worker", job_id=job.id, task=job.task_name)
        try:
            await app.job_manager.retry_job(job)
        except procrastinate.exceptions.ProcrastinateException:
            continue  # another worker's recovery retried it first
        count += 1
    return count + await requeue_orphan_sends(rt, idle_seconds=idle_seconds)


async def run_worker(
    rt: Runtime,
    conninfo: str,
    *,
    reconnect_first_seconds: float = 0.5,
    reconnect_max_seconds: float = 30.0,
    **options: Any,
) -> None:
    """Run a worker until cancelled, through database outages.

    Cancelling it stops the worker gracefully (the jobs it runs finish first): that is how
    SIGTERM and Ctrl-C stop ``mixhouse worker`` (:func:`mixhouse.termination.run_async`), so
    procrastinate's own signal handlers are off.

    When PostgreSQL goes away (a restart, a failover, a network cut) procrastinate's worker
    stops or raises; this loop waits for the database with exponential backoff
    (``reconnect_first_seconds`` doubling up to ``reconnect_max_seconds``, jittered), then
    starts a new worker incarnation. The previous incarnation's registration is removed, so
    its unfinished jobs are retried at once by :func:`recover` (they were all done or dead
    when it returned: procrastinate waits for running jobs before it stops). Nothing is lost:
    a job whose outcome could not be recorded is still ``doing`` and runs again, and every
    step of a send is a conditional transition, so a second run does no harm.

    Args:
        rt: the process's runtime.
        conninfo: libpq URI of the database.
        reconnect_first_seconds, reconnect_max_seconds: the backoff's first and largest delay.
        options: overrides of procrastinate's worker options (``concurrency``, ``name``...).

    Raises:
        asyncio.CancelledError: when cancelled, once the worker has stopped.
    """
    worker_options: dict[str, Any] = {
        "queues": [QUEUE],
        "concurrency": rt.settings.worker_concurrency,
        "wait": True,
        "fetch_job_polling_interval": rt.settings.job_polling_interval_seconds,
        "update_heartbeat_interval": rt.settings.worker_heartbeat_seconds,
        "stalled_worker_timeout": rt.settings.worker_stalled_after_seconds,
        "delete_jobs": "successful",
        "install_signal_handlers": False,
    }
    worker_options.update(options)
    app = create_job_app(rt, conninfo, scan_between_ticks=int(worker_options["concurrency"]) > 1)
    loop = asyncio.get_running_loop()

    def fresh_delays() -> Iterator[float]:
        return backoff_delays(first_seconds=reconnect_first_seconds, max_seconds=reconnect_max_seconds, rng=rt.rng)

    delays = fresh_delays()
    dead_worker_id: int | None = None
    while True:
        worker = procrastinate.worker.Worker(app=app, **worker_options)
        started = loop.time()
        try:
            async with app.open_async():
                if dead_worker_id is not None:
                    # Our previous incarnation: its jobs' worker becomes NULL, which recover()
                    # retries now rather than after the stalled-worker timeout.
                    await app.job_manager.unregister_worker(dead_worker_id)
                    dead_worker_id = None
                await recover(app, rt)  # pick up what a dead predecessor left, before the first tick
                await follow_pool_generations(rt)  # after a rotation, never plan from the old pool
                await worker.run()  # type: ignore[no-untyped-call]  # untyped in procrastinate
            why = "the worker stopped by itself (a side task lost the database)"
        except DATABASE_ERRORS as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Asked to stop while the database was gone: the shutdown's last write failed
                # and replaced the CancelledError. Stop anyway.
                raise asyncio.CancelledError from exc
            why = f"{type(exc).__name__}: {exc}".strip()
        if worker.worker_id is not None:
            dead_worker_id = worker.worker_id  # it could not unregister: the database was gone
        if loop.time() - started > _HEALTHY_RUN_SECONDS:
            delays = fresh_delays()
        log.warning("worker lost the database, reconnecting", reason=why)
        await asyncio.sleep(next(delays))
        await wait_for_database(conninfo, delays)
        log.info("database reachable again, worker restarting")
