"""The worker process: procrastinate tasks that scan chains, move sends and reconcile.

Workers coordinate only through PostgreSQL (procrastinate fetches jobs with
``SELECT ... FOR UPDATE SKIP LOCKED``), so running more of them, on more machines, is adding
processes pointed at the same database. Jobs for one send share the lock ``send:<id>`` and
never run concurrently.

The ``seal_audit`` task chains new audit entries every second (:func:`mixhouse.audit.seal`).

Scans on arrival: a scan job sweeps what it accepted and, when deposits joined the pool, runs a
payout round at once; then, until the next tick's job takes over, it waits on any chain that
can report a new transfer (the local Jobcoin ledger's long poll) and scans again as one lands.
The scan and round ticks stay the fallback (the only path on chains without such a wait).

Database outages: :func:`run_worker` outlives them, reconnecting with backoff.

Recovery: a worker killed mid-job leaves its job ``doing``; the ``recover`` task retries jobs
of workers whose heartbeat stopped, and re-enqueues any unfinished send that has no job
waiting (belt and braces: a send is never forgotten).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import procrastinate
import procrastinate.worker
import structlog
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from mixhouse import audit, audit_anchor
from mixhouse.chains.base import UtxoChainAdapter
from mixhouse.errors import ConfigError
from mixhouse.jobs import QUEUE, TASK_EXECUTE_SEND, TASK_PAYOUT_ROUND, TASK_RECONCILE, TASK_SCAN_CHAIN, send_job
from mixhouse.keys.rotation import follow_rotation
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.mixes import expire_mixes
from mixhouse.mixer.reconcile import reconcile
from mixhouse.mixer.rounds import run_round, run_sweeps
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.sends import execute_send
from mixhouse.money import Asset
from mixhouse.reconnect import DATABASE_ERRORS, backoff_delays, wait_for_database
from mixhouse.unit import unit
from mixhouse.wallets.sources.configured import sources_from_settings
from mixhouse.wallets.sync import sync_all

log = structlog.get_logger(__name__)

# A worker incarnation that ran this long was healthy: the next outage starts a fresh backoff.
_HEALTHY_RUN_SECONDS = 60.0
# A scan job waits for transfers (the local ledger's long poll) until two scan intervals from its
# start (the next tick's job takes over), never for less than _MIN_WAIT_SECONDS at a time.
_MIN_WAIT_SECONDS = 0.05
# A round run because deposits were just pooled waits this long for one already running.
_ROUND_WAIT_SECONDS = 5.0
_LOCK_POLL_SECONDS = 0.02
_WAIT_LOCK_SQL = text("SELECT pg_advisory_lock(hashtext('mixhouse:scan_wait'))")
_WAIT_UNLOCK_SQL = text("SELECT pg_advisory_unlock(hashtext('mixhouse:scan_wait'))")


_ORPHAN_SENDS_SQL = text(
    """
    SELECT s.id FROM sends s
    WHERE s.state <> 'confirmed'
      AND NOT (s.kind = 'payout' AND s.released_at IS NULL)  -- the release gate holds it
      -- A released payout still scheduled is the payout rounds' to sign (every round selects
      -- them all): a job of its own would only race the rounds and spin on the busy pair.
      AND NOT (s.kind = 'payout' AND s.state = 'scheduled' AND s.asset = ANY(CAST(:round_assets AS text[])))
      AND s.updated_at < now() - make_interval(secs => :idle)
      AND s.due_at < now()
      AND NOT EXISTS (
          SELECT 1 FROM procrastinate_jobs j
          WHERE j.task_name = :task AND j.status IN ('todo', 'doing')
            AND j.args ->> 'send_id' = s.id::text
      )
    ORDER BY s.id
    LIMIT 1000
    """
)


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


def create_job_app(rt: Runtime, conninfo: str, *, scan_between_ticks: bool = True) -> procrastinate.App:
    """A procrastinate App whose tasks close over ``rt`` (no module-level state).

    Args:
        rt: the process's runtime.
        conninfo: libpq URI of the database (the same one ``rt.engine`` uses).
        scan_between_ticks: whether a scan job stays until just before the next tick to scan
            again as soon as a chain reports a transfer (:func:`_scan_on_arrival`); off for a
            worker that runs one job at a time, which the waiting would hold up.
    """
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))
    scan_every = rt.settings.scan_interval_seconds
    reconcile_every = rt.settings.reconcile_interval_seconds

    @app.task(
        name=TASK_EXECUTE_SEND,
        queue=QUEUE,
        retry=procrastinate.RetryStrategy(max_attempts=100, linear_wait=2),
    )
    async def execute_send_task(send_id: int) -> None:
        await execute_send(rt, send_id)

    @app.periodic(cron=every_seconds(scan_every), periodic_id="scan")
    # Periodic tasks take no procrastinate `lock`: a worker killed while running one would leave
    # it `doing` and block every later run, the recovery task included. `queueing_lock` only
    # keeps them from piling up; scans serialise on a session advisory lock instead, which
    # PostgreSQL releases when a dead worker's connection drops.
    @app.task(name=TASK_SCAN_CHAIN, queue=QUEUE, queueing_lock="scan")
    async def scan_task(timestamp: int) -> None:  # noqa: ARG001 - procrastinate passes the tick
        for asset in rt.adapters:
            await _scan_and_pay(rt, asset)
        await expire_mixes(rt)
        # Until the next tick's job, a chain that can say when a transfer lands (the local
        # ledger's long poll) is scanned again as soon as one does, instead of up to a whole
        # interval later. On a chain without it (the original Jobcoin API) nothing changes.
        if scan_between_ticks:
            await _scan_on_arrival(rt, seconds=2 * scan_every)

    @app.periodic(cron=every_seconds(reconcile_every), periodic_id="reconcile")
    @app.task(name=TASK_RECONCILE, queue=QUEUE, queueing_lock="reconcile")
    async def reconcile_task(timestamp: int) -> None:  # noqa: ARG001 - procrastinate passes the tick
        # Pool key rotation (keys/rotation.py): the active generation's key, one drain step.
        await follow_rotation(rt)
        for asset in rt.adapters:
            await reconcile(rt, asset)

    round_every = rt.settings.payout_round_seconds

    @app.periodic(cron=every_seconds(round_every), periodic_id="payout_round")
    @app.task(name=TASK_PAYOUT_ROUND, queue=QUEUE, queueing_lock="payout_round")
    async def payout_round_task(timestamp: int) -> None:  # noqa: ARG001 - procrastinate passes the tick
        # Every asset's due payouts leave together, gated; rounds serialise on an advisory lock.
        for asset in rt.adapters:
            await run_round(rt, asset)

    sources = sources_from_settings(rt.settings)
    sync_every = rt.settings.wallet_sync_interval_seconds

    @app.periodic(cron=every_seconds(sync_every), periodic_id="sync_wallets")
    @app.task(name="sync_wallets", queue=QUEUE, queueing_lock="sync_wallets")
    async def sync_wallets_task(timestamp: int) -> None:  # noqa: ARG001 - procrastinate passes the tick
        await sync_all(rt.engine, sources.get, bitcoin_network=rt.settings.bitcoin_network)

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


@runtime_checkable
class TransferWaiter(Protocol):
    """An adapter that can wait for the next transfer after its last scan (the Jobcoin adapter
    on the local ledger, :meth:`~mixhouse.chains.jobcoin.adapter.JobcoinAdapter.wait_for_transfers`)."""

    async def wait_for_transfers(self, wait_seconds: float) -> bool:
        """Whether a transfer came within ``wait_seconds``; ``False`` at once where it cannot tell."""
        ...


async def _scan_and_pay(rt: Runtime, asset: Asset) -> None:
    """Scan ``asset``, sweep what the scan accepted and, if deposits joined the pool, run a
    payout round at once."""
    await scan_asset(rt, asset)
    # Sweep what the scan accepted at once, in batches, rather than one job per sweep.
    if await run_sweeps(rt, asset):
        # Deposits just joined the pool: their payouts due now leave in a round right away
        # instead of at the next round tick (which stays the fallback, and still sends whatever
        # falls due later). Rounds serialise on their advisory lock: a round running elsewhere
        # (begun before these deposits were pooled, it may not have seen them) is waited for.
        await run_round(rt, asset, lock_wait_seconds=_ROUND_WAIT_SECONDS)


async def _scan_on_arrival(rt: Runtime, *, seconds: float) -> None:
    """Until ``seconds`` from now, scan again each time a :class:`TransferWaiter` chain reports
    a transfer. One job waits at a time (a session advisory lock, released if the worker dies);
    the next tick's job queues on the lock and takes over when this one stops. ``seconds`` is
    two scan intervals, so one late tick leaves no time unwatched. Returns at once when no
    adapter can wait."""
    waiters = [(asset, a) for asset, a in rt.adapters.items() if isinstance(a, TransferWaiter)]
    if not waiters:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    async with rt.engine.connect() as lock_conn:
        # Queued on the lock (no polling) until the waiter before this one stops, at most
        # until this job's own deadline. A session lock taken inside a transaction outlives it.
        budget_ms = int((seconds - _MIN_WAIT_SECONDS) * 1000)
        try:
            await lock_conn.execute(text(f"SET LOCAL lock_timeout = {max(1, budget_ms)}"))
            await lock_conn.execute(_WAIT_LOCK_SQL)
            await lock_conn.commit()
        except OperationalError:
            await lock_conn.rollback()
            return  # another worker waits on the chains until after this job's deadline
        try:
            while (left := deadline - loop.time()) > _MIN_WAIT_SECONDS:
                woke = await asyncio.gather(*(a.wait_for_transfers(left) for _, a in waiters))
                if not any(woke):
                    if deadline - loop.time() > left / 2:
                        return  # none waited (each answered at once): the next tick scans
                    continue
                for (asset, _), came in zip(waiters, woke, strict=True):
                    if came:
                        await _scan_and_pay(rt, asset)
                # A scan that found another worker's scan running read nothing: the waiter
                # would wake again at once. A short pause lets that scan finish.
                await asyncio.sleep(_LOCK_POLL_SECONDS)
        finally:
            await lock_conn.execute(_WAIT_UNLOCK_SQL)
            await lock_conn.commit()


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
    async with unit(rt.engine) as work:
        # Released payouts are the rounds' to sign; UTXO payouts only while batching is on (else
        # each has its own job, coin selection per payout).
        round_assets = [
            a.value
            for a, adapter in rt.adapters.items()
            if not isinstance(adapter, UtxoChainAdapter) or rt.settings.utxo_batch_max_outputs > 1
        ]
        orphans = (
            await work.conn.execute(
                _ORPHAN_SENDS_SQL, {"idle": idle_seconds, "task": TASK_EXECUTE_SEND, "round_assets": round_assets}
            )
        ).all()
        for (send_id,) in orphans:
            work.defer(send_job(send_id))
        count += len(orphans)
    return count


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
