"""``mixhouse watch status`` / ``mixhouse watch resume``: a watcher stopped by a too-deep reorg is
listed, resumed from the command line (in its own process, on the real database) with its
``watch.resumed`` audit entry, and a consumer that is not stopped is refused."""

from __future__ import annotations

import os

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.db.tables import audit_log
from mixhouse.watch import store
from tests.e2e import run_mixhouse


async def _cli(database_url: str, *args: str) -> tuple[int, str]:
    env = {**os.environ, "MIXHOUSE_DATABASE_URL": database_url, "COLUMNS": "250"}
    code, out, err = await run_mixhouse(env, *args)
    return code, out + err


async def test_status_lists_a_stopped_watcher_and_resume_clears_it(database_url: str, engine: AsyncEngine) -> None:
    await store.stop_consumer(engine, "ETH", "deposits:USDT", height=120, max_depth=24, reason="reorg too deep")
    code, out = await _cli(database_url, "watch", "status")
    assert code == 0, out
    assert "deposits:USDT" in out
    assert "reorg too deep" in out

    code, out = await _cli(database_url, "watch", "resume", "deposits:USDT", "--actor", "ops-alice")
    assert code == 0, out
    assert "resumed 'deposits:USDT' on ETH" in out
    assert await store.stop_reason(engine, "ETH", "deposits:USDT") is None
    async with engine.connect() as conn:
        actors = (
            (await conn.execute(select(audit_log.c.actor).where(audit_log.c.action == "watch.resumed"))).scalars().all()
        )
    assert actors == ["ops-alice"]

    code, out = await _cli(database_url, "watch", "status")
    assert code == 0, out
    assert "no watcher is stopped" in out


async def test_resume_refuses_a_running_consumer_and_asks_for_the_chain(database_url: str, engine: AsyncEngine) -> None:
    code, out = await _cli(database_url, "watch", "resume", "deposits:ETH")
    assert code == 1
    assert "is not stopped" in out
    for chain in ("BTC", "ETH"):
        await store.stop_consumer(engine, chain, "wallets", height=7, max_depth=3, reason="deep")
    code, out = await _cli(database_url, "watch", "resume", "wallets")
    assert code != 0
    assert "--chain" in out
    code, out = await _cli(database_url, "watch", "resume", "wallets", "--chain", "BTC")
    assert code == 0, out
    assert await store.stop_reason(engine, "BTC", "wallets") is None
    assert await store.stop_reason(engine, "ETH", "wallets") == "deep"
