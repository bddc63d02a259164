"""The API's hot reads (issue 14, item 8): a mix status and ``/health`` in one statement each.

On a real PostgreSQL. Statements are counted with SQLAlchemy's ``before_cursor_execute``
event on the runtime's engine (the pool's pre-ping does not go through it, so the test also
checks that the API's engine has none). ``mixhouse serve`` with ``MIXHOUSE_API_WORKERS=2``
runs as a subprocess. Speed itself is measured by ``benchmarks/api.py``, not here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import SecretStr
from sqlalchemy import event

from mixhouse.api.app import create_app
from mixhouse.api.schemas import MixStatusOut
from mixhouse.api.serving import api_runtime
from mixhouse.config import Settings
from mixhouse.db.tables import deposits, sends
from mixhouse.mixer.mixes import get_mix
from mixhouse.mixer.runtime import Runtime
from mixhouse.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 120  # three interpreters import everything on a loaded machine
COIN = 10**8


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    runtime = api_runtime(
        Settings(database_url=database_url, admin_api_key=SecretStr("test-admin-key-0123456789")), database_url
    )
    yield runtime
    await runtime.aclose()
    await runtime.engine.dispose()


@pytest.fixture
async def client(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


class StatementLog:
    """Every statement the engine runs, with whether its connection was in autocommit."""

    def __init__(self, rt: Runtime) -> None:
        self.statements: list[tuple[str, bool]] = []
        self._engine = rt.engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append((statement, bool(conn.connection.driver_connection.autocommit)))

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._record)


async def _mix_with_history(client: httpx.AsyncClient, rt: Runtime) -> dict[str, Any]:
    """A mix with a pooled deposit (a 25-digit amount), a dropped one, a sweep and two payouts."""
    answer = await client.post("/api/v1/mixes", json={"asset": "JOBCOIN", "withdrawal_addresses": ["r-1", "r-2"]})
    assert answer.status_code == 201, answer.text
    mix: dict[str, Any] = answer.json()
    moment = datetime.now(UTC).replace(microsecond=120)  # trailing zeros: JSON drops them
    async with rt.engine.begin() as conn:
        dep_id = (
            await conn.execute(
                deposits.insert()
                .values(
                    mix_id=mix["id"],
                    asset="JOBCOIN",
                    chain_ref=f"{mix['deposit_address']}#0",
                    deposit_address=mix["deposit_address"],
                    from_addresses=["sender", "sender-2"],
                    amount=10**25 + 7,
                    state="pooled",
                    confirmations=3,
                    fee_amount=COIN // 2,
                    network_fee_amount=0,
                    payout_total=10**25 - COIN,
                    released_at=moment,
                    anonymity_set=9,
                )
                .returning(deposits.c.id)
            )
        ).scalar_one()
        await conn.execute(
            deposits.insert().values(
                mix_id=mix["id"],
                asset="JOBCOIN",
                chain_ref=f"{mix['deposit_address']}#1",
                deposit_address=mix["deposit_address"],
                from_addresses=["other"],
                amount=7 * COIN,
                state="dropped",
                reason="too small",
            )
        )
        common = {"asset": "JOBCOIN", "mix_id": mix["id"], "deposit_id": dep_id, "from_address": "mixhouse-pool"}
        await conn.execute(
            sends.insert().values(
                kind="sweep", to_address="mixhouse-pool", amount=COIN, state="confirmed", due_at=moment, **common
            )
        )
        await conn.execute(
            sends.insert().values(
                kind="payout",
                to_address="r-1",
                amount=20 * COIN,
                state="confirmed",
                txid="tx-1",
                due_at=moment,
                confirmed_at=moment + timedelta(seconds=3),
                **common,
            )
        )
        await conn.execute(
            sends.insert().values(
                kind="payout", to_address="r-2", amount=5 * COIN, state="scheduled", due_at=moment, **common
            )
        )
    return mix


async def test_status_is_one_autocommit_statement(client: httpx.AsyncClient, rt: Runtime) -> None:
    mix = await _mix_with_history(client, rt)
    log = StatementLog(rt)
    try:
        answer = await client.get(mix["status_url"])
    finally:
        log.close()
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["deposits"]) == 2
    assert len(answer.json()["payouts"]) == 2
    # One round trip: no separate reads of deposits and sends, no BEGIN/ROLLBACK around it.
    assert len(log.statements) == 1, log.statements
    assert log.statements[0][1] is True


async def test_health_is_one_autocommit_statement(client: httpx.AsyncClient, rt: Runtime) -> None:
    log = StatementLog(rt)
    try:
        answer = await client.get("/api/v1/health")
    finally:
        log.close()
    assert answer.json() == {"status": "ok", "database": True, "signers": []}
    assert [autocommit for _, autocommit in log.statements] == [True]


async def test_the_api_engine_has_no_pre_ping_and_no_overflow(rt: Runtime) -> None:
    pool = rt.engine.sync_engine.pool
    assert getattr(pool, "_pre_ping", None) is False
    assert getattr(pool, "_max_overflow", None) == 0


async def test_one_statement_status_equals_the_full_read(client: httpx.AsyncClient, rt: Runtime) -> None:
    # The JSON the route answers is byte for byte what the three-table read gives.
    with_history = await _mix_with_history(client, rt)
    bare = (await client.post("/api/v1/mixes", json={"asset": "JOBCOIN", "withdrawal_addresses": ["z-1"]})).json()
    for mix in (with_history, bare):
        expected = MixStatusOut.from_status(await get_mix(rt, mix["id"]), mix["status_url"]).model_dump_json()
        answer = await client.get(mix["status_url"])
        assert answer.content.decode() == expected
    payload = (await client.get(with_history["status_url"])).json()
    assert payload["deposits"][0]["amount"] == str(10**25 + 7)
    assert [p["to_address"] for p in payload["payouts"]] == ["r-1", "r-2"]
    assert payload["totals"]["paid_out"] == str(20 * COIN)


async def test_unknown_mix_is_still_a_404_problem(client: httpx.AsyncClient) -> None:
    answer = await client.get("/api/v1/mixes/no-such-mix")
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("application/problem+json")


async def test_reads_survive_connections_killed_under_them(
    client: httpx.AsyncClient, rt: Runtime, database_url: str
) -> None:
    # What a PostgreSQL restart does to a pool: every idle connection is dead. Without
    # pre-ping, the reads must retry on a fresh connection rather than answer 503.
    mix = await _mix_with_history(client, rt)
    assert (await client.get(mix["status_url"])).status_code == 200
    with psycopg.connect(database_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert killed is not None
    assert killed[0] >= 1
    assert (await client.get(mix["status_url"])).status_code == 200
    assert (await client.get("/api/v1/health")).json()["database"] is True


def _workers(pid: int) -> list[int]:
    """The uvicorn workers of process ``pid``: its children started by multiprocessing's spawn
    (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def serve_two_workers(database_url: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXHOUSE_")}
    env.update(
        MIXHOUSE_DATABASE_URL=database_url,
        MIXHOUSE_API_PORT=str(port),
        MIXHOUSE_API_WORKERS="2",
        MIXHOUSE_EVM_ENABLED="false",
        MIXHOUSE_BITCOIN_ENABLED="false",
        PYTHONPATH=str(ROOT),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "mixhouse", "serve"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="counts worker processes through /proc")
def test_serve_runs_the_configured_workers(serve_two_workers: tuple[subprocess.Popen[bytes], str]) -> None:
    process, base = serve_two_workers
    deadline = time.monotonic() + STARTUP_SECONDS
    served = False
    while time.monotonic() < deadline and process.poll() is None and not (served and len(_workers(process.pid)) == 2):
        try:
            answer = httpx.post(
                f"{base}/api/v1/mixes", json={"asset": "JOBCOIN", "withdrawal_addresses": ["w-1"]}, timeout=5
            )
            if answer.status_code == 201:
                status = httpx.get(base + answer.json()["status_url"], timeout=5)
                assert status.status_code == 200, status.text
                served = True
                time.sleep(0.1)  # both workers may not be counted yet
        except httpx.HTTPError:
            time.sleep(0.2)  # not listening yet
    assert process.poll() is None, "mixhouse serve exited"
    assert served, "no worker answered"
    workers = _workers(process.pid)
    assert len(workers) == 2
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "a worker outlived mixhouse serve"
