"""The mixer's worker tasks: executing sends, scanning chains (with scan on arrival), payout
rounds and reconciliation, registered on the worker's procrastinate app by
:func:`register_mixer_tasks` (:mod:`mixhouse.app.worker` composes every feature's tasks).

Scans on arrival: a scan job sweeps what it accepted and, when deposits joined the pool, runs a
payout round at once; then, until the next tick's job takes over, it waits on any chain that
can report a new transfer (the local Jobcoin ledger's long poll) and scans again as one lands.
The scan and round ticks stay the fallback (the only path on chains without such a wait).
"""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

import procrastinate
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from mixhouse.chains.base import UtxoChainAdapter
from mixhouse.jobs import (
    QUEUE,
    TASK_EXECUTE_SEND,
    TASK_PAYOUT_ROUND,
    TASK_RECONCILE,
    TASK_SCAN_CHAIN,
    every_seconds,
    send_job,
)
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.mixes import expire_mixes
from mixhouse.mixer.pool_rotation import follow_rotation
from mixhouse.mixer.reconcile import reconcile
from mixhouse.mixer.rounds import run_round, run_sweeps
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.sends import execute_send
from mixhouse.money import Asset
from mixhouse.unit import unit

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
      -- Held for the operator: a token blacklists its sender (mixer/sends.py _hold_blacklisted).
      AND (s.last_error IS NULL OR s.last_error NOT LIKE 'blocked:%')
      AND NOT EXISTS (
          SELECT 1 FROM procrastinate_jobs j
          WHERE j.task_name = :task AND j.status IN ('todo', 'doing')
            AND j.args ->> 'send_id' = s.id::text
      )
    ORDER BY s.id
    LIMIT 1000
    """
)


def register_mixer_tasks(app: procrastinate.App, rt: Runtime, *, scan_between_ticks: bool = True) -> None:
    """Register the mixer's tasks on ``app``; they close over ``rt`` (no module-level state).

    Args:
        app: the worker's procrastinate app.
        rt: the process's runtime.
        scan_between_ticks: whether a scan job stays until just before the next tick to scan
            again as soon as a chain reports a transfer (:func:`_scan_on_arrival`); off for a
            worker that runs one job at a time, which the waiting would hold up.
    """
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
        # Pool key rotation (mixer/pool_rotation.py): the active generation's key, one drain step.
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


async def requeue_orphan_sends(rt: Runtime, *, idle_seconds: float = 10.0) -> int:
    """Enqueue a job for every unfinished send that has none waiting (belt and braces: a send
    is never forgotten, whatever happened to its job).

    Returns:
        How many jobs were enqueued.
    """
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
    return len(orphans)


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
