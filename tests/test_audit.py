"""The hash-chained audit log and the unit of work, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mixhouse import audit, jobs
from mixhouse.audit import GENESIS_HASH, AuditEntry
from mixhouse.db.tables import audit_log
from mixhouse.errors import AuditChainBroken
from mixhouse.unit import unit


class RollbackError(Exception):
    """Raised inside a unit to roll it back."""


def _entry(i: int, **overrides: Any) -> AuditEntry:
    values: dict[str, Any] = {
        "action": "deposit.seen",
        "entity_type": "deposit",
        "entity_id": str(i),
        "actor": "worker",
        "asset": "ETH",
        "amount": 10**18 + i,
        "details": {"i": i, "note": f"entry {i}", "nested": {"b": [1, 2], "a": None}},
    }
    values.update(overrides)
    return AuditEntry(**values)


async def _rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(audit_log).order_by(audit_log.c.id))).all())


async def _verify(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return await audit.verify(conn)


async def _count(conn: AsyncConnection, table: str) -> int:
    return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


def _independent_hash(prev: bytes, row: Any) -> bytes:
    """The documented chain hash recomputed from a stored row, without mixhouse.audit."""
    body = {
        "id": row.id,
        "at": row.at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": row.actor,
        "action": row.action,
        "entity_type": row.entity_type,
        "entity_id": row.entity_id,
        "asset": row.asset,
        "amount": None if row.amount is None else str(row.amount),
        "details": row.details,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(prev + canonical).digest()


async def _append_in_units(engine: AsyncEngine, sizes: list[int]) -> None:
    i = 0
    for size in sizes:
        async with unit(engine) as work:
            for _ in range(size):
                i += 1
                work.audit(_entry(i))


async def test_empty_log_verifies(engine: AsyncEngine) -> None:
    assert await _verify(engine) == 0


async def test_append_and_verify(engine: AsyncEngine) -> None:
    await _append_in_units(engine, [1, 3, 2, 4])
    assert await _verify(engine) == 10

    rows = await _rows(engine)
    assert [r.id for r in rows] == list(range(1, 11))
    assert bytes(rows[0].prev_hash) == bytes(32)
    assert bytes(32) == GENESIS_HASH
    prev = bytes(32)
    for row in rows:
        assert bytes(row.prev_hash) == prev
        assert len(bytes(row.hash)) == 32
        assert bytes(row.hash) == _independent_hash(prev, row)
        prev = bytes(row.hash)
    # The stored values are what was written.
    assert [r.entity_id for r in rows] == [str(i) for i in range(1, 11)]
    assert [r.amount for r in rows] == [10**18 + i for i in range(1, 11)]
    assert rows[4].details == {"i": 5, "note": "entry 5", "nested": {"b": [1, 2], "a": None}}
    assert all(r.asset == "ETH" and r.actor == "worker" for r in rows)


async def test_entries_without_asset_or_amount(engine: AsyncEngine) -> None:
    async with unit(engine) as work:
        work.audit(AuditEntry(action="mix.created", entity_type="mix", entity_id="m1", actor="api"))
        work.audit(_entry(2, amount=10**70, details={"huge": 10**40, "text": "ünïcode ✓"}))
    assert await _verify(engine) == 2
    rows = await _rows(engine)
    assert rows[0].asset is None
    assert rows[0].amount is None
    assert rows[0].details == {}
    assert rows[1].amount == 10**70


async def test_serial_follows_explicit_ids(engine: AsyncEngine) -> None:
    await _append_in_units(engine, [3])
    async with engine.connect() as conn:
        last_value = (await conn.execute(text("SELECT last_value FROM audit_log_id_seq"))).scalar_one()
    assert last_value == 3


async def test_update_and_delete_are_refused(engine: AsyncEngine) -> None:
    await _append_in_units(engine, [2])
    statements = [
        "UPDATE audit_log SET amount = amount + 1 WHERE id = 1",
        "UPDATE audit_log SET details = '{}'::jsonb",
        "DELETE FROM audit_log WHERE id = 2",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ]
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))
    rows = await _rows(engine)
    assert [r.id for r in rows] == [1, 2]
    assert rows[0].amount == 10**18 + 1
    assert await _verify(engine) == 2


async def _tamper(engine: AsyncEngine, statement: str) -> None:
    """Edit the log behind the trigger's back, as the table owner could."""
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        result = await conn.execute(text(statement))
        assert result.rowcount == 1
        await conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET amount = amount + 1 WHERE id = 3",
        "UPDATE audit_log SET details = jsonb_set(details, '{note}', '\"forged\"') WHERE id = 3",
        "UPDATE audit_log SET entity_id = 'other' WHERE id = 3",
        "UPDATE audit_log SET asset = 'JOBCOIN' WHERE id = 3",
        "UPDATE audit_log SET at = at + interval '1 second' WHERE id = 3",
        "UPDATE audit_log SET amount = NULL WHERE id = 3",
    ],
)
async def test_tampering_is_detected(engine: AsyncEngine, statement: str) -> None:
    await _append_in_units(engine, [2, 3])
    assert await _verify(engine) == 5
    await _tamper(engine, statement)
    with pytest.raises(AuditChainBroken, match=r"audit entry 3\b"):
        await _verify(engine)
    # The trigger is back on.
    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM audit_log WHERE id = 5"))


async def test_rehashed_entry_breaks_the_next_link(engine: AsyncEngine) -> None:
    """Rewriting an entry's hash too (a forger recomputing it) breaks the following entry."""
    await _append_in_units(engine, [5])
    rows = await _rows(engine)
    forged = SimpleNamespace(**{**dict(rows[1]._mapping), "amount": 1})
    new_hash = _independent_hash(bytes(forged.prev_hash), forged)
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        await conn.execute(
            text("UPDATE audit_log SET amount = 1, hash = :h WHERE id = 2"),
            {"h": new_hash},
        )
        await conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))
    with pytest.raises(AuditChainBroken, match=r"audit entry 3\b"):
        await _verify(engine)


async def test_missing_entry_is_detected(engine: AsyncEngine) -> None:
    await _append_in_units(engine, [4])
    await _tamper(engine, "DELETE FROM audit_log WHERE id = 2")
    with pytest.raises(AuditChainBroken, match=r"audit entry 2\b"):
        await _verify(engine)


async def test_verify_in_small_batches(engine: AsyncEngine) -> None:
    await _append_in_units(engine, [7, 6])
    async with engine.connect() as conn:
        assert await audit.verify(conn, batch=2) == 13
        assert await audit.verify(conn, batch=13) == 13
    await _tamper(engine, "UPDATE audit_log SET actor = 'admin' WHERE id = 12")
    async with engine.connect() as conn:
        with pytest.raises(AuditChainBroken, match=r"audit entry 12\b"):
            await audit.verify(conn, batch=5)


async def test_rolled_back_unit_writes_nothing(engine: AsyncEngine) -> None:
    await _append_in_units(engine, [1])

    async def failing_unit() -> None:
        async with unit(engine) as work:
            work.audit(_entry(100))
            work.defer(jobs.send_job(42))
            await work.conn.execute(text("INSERT INTO chain_cursors (asset, cursor) VALUES ('ETH', 'rolled-back')"))
            raise RollbackError

    with pytest.raises(RollbackError):
        await failing_unit()
    async with engine.connect() as conn:
        assert await _count(conn, "audit_log") == 1
        assert await _count(conn, "procrastinate_jobs") == 0
        assert await _count(conn, "chain_cursors") == 0
    assert await _verify(engine) == 1
    # The next unit continues the chain without a gap.
    await _append_in_units(engine, [1])
    assert await _verify(engine) == 2


async def test_concurrent_units_form_one_chain(engine: AsyncEngine) -> None:
    writers, per_writer = 20, 5

    async def writer(w: int) -> None:
        async with unit(engine) as work:
            for k in range(per_writer):
                work.audit(_entry(k, entity_id=f"w{w}", details={"writer": w, "k": k}))
            await asyncio.sleep(0)

    await asyncio.gather(*(writer(w) for w in range(writers)))
    assert await _verify(engine) == writers * per_writer

    rows = await _rows(engine)
    assert [r.id for r in rows] == list(range(1, writers * per_writer + 1))
    # Each unit's entries are contiguous and in order: the lock serialises whole units.
    for start in range(0, len(rows), per_writer):
        block = rows[start : start + per_writer]
        assert len({r.entity_id for r in block}) == 1
        assert [r.details["k"] for r in block] == list(range(per_writer))
    assert {r.entity_id for r in rows} == {f"w{w}" for w in range(writers)}


async def test_jobs_are_enqueued_only_on_commit(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    at = datetime.now(UTC).replace(microsecond=123456) + timedelta(hours=1)
    seen_before_commit: dict[str, int] = {}
    real_append = audit.append

    async def spying_append(conn: AsyncConnection, entries: list[AuditEntry]) -> None:
        # jobs.defer has run in the unit's transaction; COMMIT has not happened yet.
        seen_before_commit["inside"] = await _count(conn, "procrastinate_jobs")
        async with engine.connect() as other:
            seen_before_commit["outside"] = await _count(other, "procrastinate_jobs")
        await real_append(conn, entries)

    monkeypatch.setattr("mixhouse.unit.audit.append", spying_append)

    async with unit(engine) as work:
        work.defer(jobs.send_job(7, at))
        work.defer(jobs.JobRequest(jobs.TASK_SCAN_CHAIN, {"asset": "ETH", "n": [1, 2]}))
        work.audit(_entry(1))
        async with engine.connect() as other:
            assert await _count(other, "procrastinate_jobs") == 0

    assert seen_before_commit == {"inside": 2, "outside": 0}
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT queue_name, task_name, args, scheduled_at, lock, status::text AS status"
                " FROM procrastinate_jobs ORDER BY id"
            )
        )
        job_rows = result.all()
        assert await audit.verify(conn) == 1
    assert len(job_rows) == 2
    send, scan = job_rows
    assert send.queue_name == "mixhouse"
    assert send.task_name == "execute_send"
    assert send.args == {"send_id": 7}
    assert send.scheduled_at == at
    assert send.lock == "send:7"
    assert send.status == "todo"
    assert scan.task_name == "scan_chain"
    assert scan.args == {"asset": "ETH", "n": [1, 2]}
    assert scan.scheduled_at is None
    assert scan.lock is None


async def test_empty_unit_commits_row_changes(engine: AsyncEngine) -> None:
    async with unit(engine) as work:
        await work.conn.execute(text("INSERT INTO chain_cursors (asset, cursor) VALUES ('ETH', '1')"))
    async with engine.connect() as conn:
        assert await _count(conn, "chain_cursors") == 1
        assert await _count(conn, "audit_log") == 0
        assert await _count(conn, "procrastinate_jobs") == 0
        assert (await conn.execute(select(func.count()).select_from(audit_log))).scalar_one() == 0
