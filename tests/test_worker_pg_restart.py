"""A worker outlives a PostgreSQL restart (issue 14, item 4).

procrastinate stops its worker when a side task loses the database ("Side task listener failed
... stopping worker"), and ``mixhouse worker`` used to exit with it and stay down. Here a real
worker process runs mixes against a private PostgreSQL (never the shared server), the server
is stopped while payouts are in flight and started again; the same worker process must
reconnect, finish every mix, and the ledger must equal the books to the base unit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.app.build import build_runtime
from mixhouse.chains.jobcoin import ledger
from mixhouse.db.engine import make_engine
from mixhouse.db.tables import sends
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.reconcile import reconcile
from mixhouse.money import Asset
from mixhouse.termination import EXIT_STATUS_SIGTERM
from tests.e2e import fast_settings, local_ledger
from tests.fixtures.restartable_pg import RestartablePostgres
from tests.test_crash import _all_paid, _assert_books_match_ledger, _worker_env

COIN = 10**8
MIXES = 8
LOST_MARKER = "worker lost the database"


async def _wait_for(condition: Any, *, within: float, what: str) -> None:
    """Poll the async ``condition`` until true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def _confirmed_payouts(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        query = select(func.count()).select_from(sends).where(sends.c.kind == "payout", sends.c.state == "confirmed")
        return int((await conn.execute(query)).scalar_one())


@pytest.mark.timeout(600)
async def test_worker_survives_a_postgres_restart_and_pays_every_payout_once(
    restartable_pg: RestartablePostgres, tmp_path: Path
) -> None:
    url = restartable_pg.database_url
    engine = make_engine(url, pool_size=5)
    log_path = tmp_path / "worker.log"
    try:
        async with local_ledger(engine) as led:
            rt = build_runtime(fast_settings(url, jobcoin_api_url=led.api_url), url)
            try:
                await ledger.mint(engine, "sender", 1_000 * COIN)
                for i in range(MIXES):
                    addresses = [f"pg-restart-{i}-{k}" for k in range(1 + i % 3)]
                    # Payouts fall due over ~30 s: some land before the restart, some after.
                    mix = await create_mix(rt, MixRequest("JOBCOIN", addresses, 0, 30))
                    await ledger.transfer(engine, "sender", mix["deposit_address"], (5 + i) * COIN)
                env = _worker_env(url, led.api_url)
                worker = _start_worker(env, log_path)
                try:
                    await _wait_for(lambda: _first_payout_landed(engine), within=180, what="the first confirmed payout")
                    assert not await _all_paid(engine, MIXES), "everything was paid before the restart"
                    # Restart PostgreSQL while payouts are in flight.
                    await asyncio.to_thread(restartable_pg.stop)

                    async def worker_noticed() -> bool:
                        return LOST_MARKER in log_path.read_text(errors="replace") or worker.poll() is not None

                    await _wait_for(worker_noticed, within=60, what="the worker to notice the outage")
                    await asyncio.to_thread(restartable_pg.start)
                    assert worker.poll() is None, f"the worker exited ({worker.returncode}): {_tail(log_path)}"

                    async def all_paid() -> bool:
                        assert worker.poll() is None, f"the worker exited: {_tail(log_path)}"
                        return await _all_paid(engine, MIXES)

                    await _wait_for(all_paid, within=240, what="every mix to be paid after the restart")
                finally:
                    worker.send_signal(signal.SIGTERM)
                    returncode = await asyncio.to_thread(worker.wait, 60)
                assert returncode == EXIT_STATUS_SIGTERM, _tail(log_path)
                assert LOST_MARKER in log_path.read_text(errors="replace")
                await _assert_books_match_ledger(engine, rt.adapter("JOBCOIN").pool_address)
                assert (await reconcile(rt, Asset.JOBCOIN)).ok
            finally:
                await rt.aclose()
                await rt.engine.dispose()
    finally:
        await engine.dispose()


async def _first_payout_landed(engine: AsyncEngine) -> bool:
    return await _confirmed_payouts(engine) > 0


def _start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "mixhouse", "worker", "--concurrency", "4"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def _tail(path: Path, lines: int = 40) -> str:
    return os.linesep.join(path.read_text(errors="replace").splitlines()[-lines:])
