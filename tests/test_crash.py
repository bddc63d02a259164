"""A payout is never sent twice and never lost, even when the worker dies at any moment.

The random test SIGKILLs a real worker process (``python -m mixhouse worker``) many times
while mixes are in flight, restarts it, and at the end compares the books with the ledger to
the base unit. The deterministic tests crash exactly between "sent" and "recorded".
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.app.build import build_runtime
from mixhouse.chains.base import PreparedSend
from mixhouse.chains.jobcoin import ledger
from mixhouse.chains.jobcoin.adapter import JobcoinAdapter
from mixhouse.db.tables import audit_log, deposits, sends
from mixhouse.errors import ChainError
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.reconcile import reconcile
from mixhouse.mixer.rounds import run_round
from mixhouse.mixer.sends import execute_send
from mixhouse.money import Asset
from tests.e2e import fast_settings, local_ledger, start_worker, unfinished_sends

COIN = 10**8


def _worker_env(database_url: str, api_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "MIXHOUSE_DATABASE_URL": database_url,
            "MIXHOUSE_JOBCOIN_API_URL": api_url,
            "MIXHOUSE_EVM_ENABLED": "false",
            "MIXHOUSE_SCAN_INTERVAL_SECONDS": "1",
            "MIXHOUSE_JOB_POLLING_INTERVAL_SECONDS": "0.1",
            "MIXHOUSE_JOBCOIN_SEND_SETTLE_SECONDS": "1",
            "MIXHOUSE_WORKER_HEARTBEAT_SECONDS": "0.5",
            "MIXHOUSE_WORKER_STALLED_AFTER_SECONDS": "2",
            "MIXHOUSE_RECONCILE_INTERVAL_SECONDS": "2",
            "MIXHOUSE_PAYOUT_ROUND_SECONDS": "1",
            # The gate off: payouts fall due all through the kills instead of after a held wait.
            "MIXHOUSE_PRIVACY_GATE_K": "1",
        }
    )
    return env


async def _assert_books_match_ledger(engine: AsyncEngine, pool: str) -> None:
    """Every send we recorded is in the ledger exactly once, and nothing else left the pool."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(sends))).all()
        deps = (await conn.execute(select(deposits))).all()
        everything = await ledger.all_transfers(conn)
        assert await audit.verify(conn) > 0
    stuck = [(s.id, s.kind, s.state, s.attempts, s.last_error) for s in rows if s.state != "confirmed"]
    assert not stuck, f"sends not finished: {stuck}"
    ours = Counter((s.from_address, s.to_address, s.amount) for s in rows)
    on_ledger = Counter(
        (t.from_address, t.to_address, t.amount)
        for t in everything
        if t.from_address is not None and t.from_address != "sender"
    )
    assert on_ledger == ours, "the ledger and the books disagree: a send was lost or doubled"
    assert all(s.state == "confirmed" for s in rows)
    assert all(d.state == "pooled" for d in deps)
    fees = sum(d.fee_amount for d in deps)
    async with engine.connect() as conn:
        pool_balance, _ = await ledger.address_info(conn, pool)
    assert pool_balance == fees


@pytest.mark.timeout(600)
async def test_worker_killed_at_random_moments_pays_every_payout_exactly_once(
    database_url: str, engine: AsyncEngine
) -> None:
    rnd = random.Random(int(os.environ.get("MIXHOUSE_CRASH_SEED", "20261121")))
    # Batched sends are in flight for one short request: a slow ledger widens that window so
    # that kills land inside it (the floor asserted below).
    async with local_ledger(engine, post_delay=0.3) as led:
        rt = build_runtime(fast_settings(database_url, jobcoin_api_url=led.api_url), database_url)
        try:
            await ledger.mint(engine, "sender", 1_000 * COIN)
            mixes: list[dict[str, Any]] = []
            for i in range(16):
                addresses = [f"crash-{i}-{k}" for k in range(1 + i % 3)]
                # Payouts fall due over ~40 s, so rounds keep signing batches while kills land.
                mix = await create_mix(rt, MixRequest("JOBCOIN", addresses, 0, 40))
                await ledger.transfer(engine, "sender", mix["deposit_address"], (5 + i) * COIN)
                mixes.append(mix)
            env = _worker_env(database_url, led.api_url)
            kills = int(os.environ.get("MIXHOUSE_CRASH_KILLS", "20"))
            hit_in_flight = hit_batch = 0
            for _ in range(kills):
                if await _all_paid(engine, len(mixes)):
                    break
                proc = start_worker(env)
                # Kill only once this worker has taken work (its first audited change), not while
                # it is still importing: a kill before that tests nothing.
                started = await _audit_count(engine)
                for _ in range(300):
                    if await _audit_count(engine) > started or await _all_paid(engine, len(mixes)):
                        break
                    await asyncio.sleep(0.1)
                # Rounds run on whole seconds: aim some kills at the moment a round is sending.
                loop_now = asyncio.get_running_loop().time()
                await asyncio.sleep(rnd.choice([rnd.uniform(0.0, 1.5), 1 - loop_now % 1 + rnd.uniform(0.02, 0.3)]))
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
                # Whatever the dead worker left "signed" was in flight when it died: signed, perhaps
                # sent, not yet recorded. Those are the sends the recovery must never pay twice.
                left = await _signed_now(engine)
                hit_in_flight += left > 0
                hit_batch += left > 1
            print(f"kills: {kills}, with a send in flight: {hit_in_flight}, with a batch (2+) in flight: {hit_batch}")
            assert hit_in_flight >= 2, "too few kills landed while a payout was in flight to test anything"
            proc = start_worker(env)
            try:
                for _ in range(600):
                    await asyncio.sleep(0.25)
                    async with engine.connect() as conn:
                        states = [r.state for r in (await conn.execute(select(deposits.c.state))).all()]
                    if (
                        len(states) == len(mixes)
                        and all(s == "pooled" for s in states)
                        and await unfinished_sends(engine) == 0
                    ):
                        break
            finally:
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proc.wait)
            await _assert_books_match_ledger(engine, rt.adapter("JOBCOIN").pool_address)
            assert (await reconcile(rt, Asset.JOBCOIN)).ok
        finally:
            await rt.aclose()
            await rt.engine.dispose()


async def _audit_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(audit_log))).scalar_one())


async def _all_paid(engine: AsyncEngine, n_mixes: int) -> bool:
    async with engine.connect() as conn:
        states = [r.state for r in (await conn.execute(select(deposits.c.state))).all()]
    return len(states) == n_mixes and all(s == "pooled" for s in states) and await unfinished_sends(engine) == 0


async def _signed_now(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(sends).where(sends.c.state == "signed"))).scalar_one()
        )


class _Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the code catches it."""


@pytest.mark.parametrize("crash_after_send", [True, False])
async def test_crash_between_send_and_record_never_pays_twice(
    database_url: str, engine: AsyncEngine, crash_after_send: bool
) -> None:
    async with local_ledger(engine) as led:
        rt = build_runtime(fast_settings(database_url, jobcoin_api_url=led.api_url), database_url)
        try:
            await ledger.mint(engine, "sender", 10 * COIN)
            mix = await create_mix(rt, MixRequest("JOBCOIN", ["crash-w"], 0, 0))
            await ledger.transfer(engine, "sender", mix["deposit_address"], 10 * COIN)
            await scan_asset(rt, Asset.JOBCOIN)
            async with engine.connect() as conn:
                sweep_id = (await conn.execute(select(sends.c.id).where(sends.c.kind == "sweep"))).scalar_one()
            adapter = rt.adapter("JOBCOIN")
            real_broadcast = adapter.broadcast

            async def dying_broadcast(prepared: PreparedSend) -> None:
                if crash_after_send:
                    await real_broadcast(prepared)  # the coins move, then the process dies
                raise _Crash

            adapter.broadcast = dying_broadcast  # type: ignore[method-assign]
            with pytest.raises(_Crash):
                await execute_send(rt, sweep_id)
            adapter.broadcast = real_broadcast  # type: ignore[method-assign]
            async with engine.connect() as conn:
                row = (await conn.execute(select(sends).where(sends.c.id == sweep_id))).one()
            assert row.state == "signed"
            assert row.attempts == 1
            await asyncio.sleep(1.1)  # the settle time
            assert await execute_send(rt, sweep_id) == "confirmed"
            assert await execute_send(rt, sweep_id) == "confirmed"  # a duplicate job is a no-op
            async with engine.connect() as conn:
                _, history = await ledger.address_info(conn, mix["deposit_address"])
            sweeps = [t for t in history if t.from_address == mix["deposit_address"]]
            assert len(sweeps) == 1, "the sweep left exactly once"
            assert sweeps[0].amount == 10 * COIN
        finally:
            await rt.aclose()
            await rt.engine.dispose()


@pytest.mark.parametrize("sent_before_death", [0, 3])
async def test_crash_in_the_middle_of_a_payout_round_never_pays_twice(
    database_url: str, engine: AsyncEngine, sent_before_death: int
) -> None:
    """A round signs a whole batch in one transaction, then the process dies while sending it:
    some payouts left, one left at the moment of death, the rest never did. Recovery pays each
    exactly once."""
    async with local_ledger(engine) as led:
        rt = build_runtime(fast_settings(database_url, jobcoin_api_url=led.api_url), database_url)
        try:
            await ledger.mint(engine, "sender", 100 * COIN)
            for i in range(3):
                mix = await create_mix(rt, MixRequest("JOBCOIN", [f"round-{i}-a", f"round-{i}-b"], 0, 0))
                await ledger.transfer(engine, "sender", mix["deposit_address"], (10 + i) * COIN)
            await scan_asset(rt, Asset.JOBCOIN)
            async with engine.connect() as conn:
                sweep_ids = (await conn.execute(select(sends.c.id).where(sends.c.kind == "sweep"))).scalars().all()
            for sweep_id in sweep_ids:
                assert await execute_send(rt, sweep_id) == "confirmed"
            adapter = rt.adapter("JOBCOIN")
            assert isinstance(adapter, JobcoinAdapter)
            real_broadcast = adapter.broadcast
            calls = 0

            async def dying_broadcast(prepared: PreparedSend) -> None:
                nonlocal calls
                calls += 1
                if calls <= sent_before_death + 1:
                    await real_broadcast(prepared)  # the last of these moves coins, then the process dies
                if calls > sent_before_death:
                    raise _Crash

            real_broadcast_many = adapter.broadcast_many

            async def dying_broadcast_many(batch: Sequence[PreparedSend]) -> list[ChainError | None]:
                # The batch request dies part way: the first sends moved, the rest never did.
                await real_broadcast_many(batch[: sent_before_death + 1])
                raise _Crash

            adapter.broadcast = dying_broadcast  # type: ignore[method-assign]
            adapter.broadcast_many = dying_broadcast_many  # type: ignore[method-assign]
            with pytest.raises(_Crash):
                await run_round(rt, Asset.JOBCOIN)
            adapter.broadcast = real_broadcast  # type: ignore[method-assign]
            adapter.broadcast_many = real_broadcast_many  # type: ignore[method-assign]
            assert await _signed_now(engine) >= 2, "the batch was signed as a whole before any send"
            await asyncio.sleep(1.1)  # the settle time
            for _ in range(20):
                async with engine.connect() as conn:
                    open_ids = (
                        (await conn.execute(select(sends.c.id).where(sends.c.state != "confirmed"))).scalars().all()
                    )
                if not open_ids:
                    break
                for send_id in open_ids:
                    await execute_send(rt, send_id)  # what the recovery task runs for a dead worker's sends
                await run_round(rt, Asset.JOBCOIN)
                await asyncio.sleep(0.2)
            await _assert_books_match_ledger(engine, adapter.pool_address)
        finally:
            await rt.aclose()
            await rt.engine.dispose()
