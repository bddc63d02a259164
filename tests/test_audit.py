"""The hash-chained audit log, its sealer and the unit of work, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from alembic import command
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mixhouse import audit, jobs
from mixhouse.audit import GENESIS_HASH, AuditEntry
from mixhouse.db.engine import make_engine, with_database
from mixhouse.db.migrate import alembic_config, upgrade
from mixhouse.db.tables import audit_chain_head, audit_log
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
    """Every row, in id (write) order."""
    async with engine.connect() as conn:
        return list((await conn.execute(select(audit_log).order_by(audit_log.c.id))).all())


async def _chain(engine: AsyncEngine) -> list[Any]:
    """The sealed rows, in chain (seq) order."""
    async with engine.connect() as conn:
        stmt = select(audit_log).where(audit_log.c.seq.is_not(None)).order_by(audit_log.c.seq)
        return list((await conn.execute(stmt)).all())


async def _seal_all(engine: AsyncEngine, *, batch: int = 5_000, within: float = 60.0) -> int:
    """Seal until no committed entry is left unsealed; returns how many were sealed.

    A seal takes only entries of transactions older than every transaction still running on
    the server, in any database: on a shared test server, other tests' transactions can hold a
    seal back for a moment, so this waits for them rather than expecting one seal to do it all.
    """
    total = 0
    deadline = time.monotonic() + within
    while True:
        total += await audit.seal(engine, batch=batch)
        async with engine.connect() as conn:
            left = (await conn.execute(select(func.count()).where(audit_log.c.seq.is_(None)))).scalar_one()
        if left == 0:
            return total
        assert time.monotonic() < deadline, f"{left} audit entries still unsealed after {within} s"
        await asyncio.sleep(0.05)


async def _verify(engine: AsyncEngine) -> int:
    await _seal_all(engine)
    async with engine.connect() as conn:
        return await audit.verify(conn)


async def _report(engine: AsyncEngine, *, seal_first: bool = True) -> audit.ChainReport:
    async with engine.connect() as conn:
        return await audit.verify_chain(conn, seal_first=seal_first)


async def _count(conn: AsyncConnection, table: str) -> int:
    return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


def _independent_hash(prev: bytes, row: Any, *, with_seq: bool = True) -> bytes:
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
    if with_seq:
        body["seq"] = row.seq
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(prev + canonical).digest()


def _assert_links(chain: list[Any]) -> None:
    """Positions 1..n, each linked to the previous hash and hashed as documented."""
    assert [r.seq for r in chain] == list(range(1, len(chain) + 1))
    prev = GENESIS_HASH
    for row in chain:
        assert bytes(row.prev_hash) == prev
        assert bytes(row.hash) == _independent_hash(prev, row)
        prev = bytes(row.hash)


async def _append_in_units(engine: AsyncEngine, sizes: list[int]) -> None:
    i = 0
    for size in sizes:
        async with unit(engine) as work:
            for _ in range(size):
                i += 1
                work.audit(_entry(i))


async def _sealed(engine: AsyncEngine, sizes: list[int]) -> None:
    """Append in units, then seal everything."""
    await _append_in_units(engine, sizes)
    assert await _seal_all(engine) == sum(sizes)


@pytest_asyncio.fixture
async def wide_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine with enough connections for 20+ transactions open at once."""
    eng = make_engine(database_url, pool_size=30)
    yield eng
    await eng.dispose()


# -- writing and sealing ------------------------------------------------------------------------


async def test_empty_log_verifies(engine: AsyncEngine) -> None:
    assert await _verify(engine) == 0
    assert await _report(engine) == audit.ChainReport(verified=0, unsealed=0)
    assert await audit.seal(engine) == 0


async def test_writers_leave_entries_unsealed_and_the_sealer_chains_them(engine: AsyncEngine) -> None:
    await _append_in_units(engine, [1, 3, 2, 4])
    rows = await _rows(engine)
    assert [r.id for r in rows] == list(range(1, 11))
    assert all(r.seq is None and r.prev_hash is None and r.hash is None for r in rows)
    assert all(isinstance(r.xid, int) and r.xid > 0 for r in rows)
    assert await _report(engine, seal_first=False) == audit.ChainReport(verified=0, unsealed=10)

    assert await _seal_all(engine) == 10
    assert await audit.seal(engine) == 0  # sealed once
    chain = await _chain(engine)
    # One unit after the other: xid order is commit order is id order here.
    assert [r.id for r in chain] == list(range(1, 11))
    assert bytes(chain[0].prev_hash) == bytes(32) == GENESIS_HASH
    _assert_links(chain)
    assert all(len(bytes(r.hash)) == 32 for r in chain)
    # The stored values are what was written.
    assert [r.entity_id for r in chain] == [str(i) for i in range(1, 11)]
    assert [r.amount for r in chain] == [10**18 + i for i in range(1, 11)]
    assert chain[4].details == {"i": 5, "note": "entry 5", "nested": {"b": [1, 2], "a": None}}
    assert all(r.asset == "ETH" and r.actor == "worker" for r in chain)
    async with engine.connect() as conn:
        head = (await conn.execute(select(audit_chain_head))).one()
    assert (head.seq, bytes(head.hash), head.legacy_seq) == (10, bytes(chain[-1].hash), 0)
    assert await _report(engine) == audit.ChainReport(verified=10, unsealed=0)


async def test_verify_seals_first(engine: AsyncEngine) -> None:
    await _append_in_units(engine, [2, 1])
    assert await _verify(engine) == 3
    _assert_links(await _chain(engine))


async def test_entries_without_asset_or_amount(engine: AsyncEngine) -> None:
    async with unit(engine) as work:
        work.audit(AuditEntry(action="mix.created", entity_type="mix", entity_id="m1", actor="api"))
        work.audit(_entry(2, amount=10**70, details={"huge": 10**40, "text": "ünïcode ✓"}))
    assert await _verify(engine) == 2
    rows = await _chain(engine)
    assert rows[0].asset is None
    assert rows[0].amount is None
    assert rows[0].details == {}
    assert rows[1].amount == 10**70
    assert rows[1].details == {"huge": 10**40, "text": "ünïcode ✓"}


async def test_sealing_in_small_batches(engine: AsyncEngine) -> None:
    await _append_in_units(engine, [3, 4])
    assert await _seal_all(engine, batch=2) == 7
    _assert_links(await _chain(engine))
    assert await _verify(engine) == 7


async def test_a_sealer_waits_or_steps_aside_for_another(engine: AsyncEngine) -> None:
    await _sealed(engine, [2])
    async with engine.connect() as holder:
        await holder.begin()
        # Sealing inside an open transaction keeps the sealer's lock until it ends.
        assert await audit.seal(holder) == 0
        await _append_in_units(engine, [1])
        assert await audit.seal(engine, wait=False) == 0  # does not block
        waiting = asyncio.create_task(audit.seal(engine))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await holder.commit()
    assert await waiting + await _seal_all(engine) == 1
    assert await _verify(engine) == 3


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


# -- concurrency --------------------------------------------------------------------------------


async def test_concurrent_units_form_one_chain(wide_engine: AsyncEngine) -> None:
    """20 transactions open at once (every third rolled back), then a seal: every committed
    entry is sealed exactly once, each unit's entries together and in order."""
    writers, per_writer = 20, 5
    all_written = asyncio.Barrier(writers)

    async def writer(w: int) -> None:
        async with unit(wide_engine) as work:
            for k in range(per_writer):
                work.audit(_entry(k, entity_id=f"w{w}", details={"writer": w, "k": k}))
            await audit.append(work.conn, work.entries)
            work.entries.clear()
            await all_written.wait()  # every transaction has written and none has ended
            if w % 3 == 0:
                raise RollbackError

    results = await asyncio.gather(*(writer(w) for w in range(writers)), return_exceptions=True)
    committed = {f"w{w}" for w in range(writers) if w % 3}
    assert [isinstance(r, RollbackError) for r in results] == [w % 3 == 0 for w in range(writers)]

    assert await _seal_all(wide_engine) == len(committed) * per_writer
    assert await _verify(wide_engine) == len(committed) * per_writer
    rows = await _rows(wide_engine)
    assert all(r.seq is not None for r in rows)
    chain = await _chain(wide_engine)
    _assert_links(chain)
    assert len({r.id for r in chain}) == len(chain) == len(committed) * per_writer
    for start in range(0, len(chain), per_writer):
        block = chain[start : start + per_writer]
        assert len({r.entity_id for r in block}) == 1
        assert [r.details["k"] for r in block] == list(range(per_writer))
    assert {r.entity_id for r in chain} == committed


async def test_writers_and_sealers_running_together(wide_engine: AsyncEngine) -> None:
    """Writers commit and roll back while two sealers loop: each committed entry ends up sealed
    exactly once, in one unbroken chain."""
    writers, rounds = 12, 6
    stop = asyncio.Event()
    committed: list[str] = []

    async def writer(w: int) -> None:
        for r in range(rounds):
            try:
                async with unit(wide_engine) as work:
                    work.audit(_entry(r, entity_id=f"w{w}-r{r}", details={"k": 0}))
                    work.audit(_entry(r, entity_id=f"w{w}-r{r}", details={"k": 1}))
                    await asyncio.sleep(0.001 * ((w * 7 + r) % 5))
                    if (w + r) % 4 == 0:
                        raise RollbackError
            except RollbackError:
                continue
            committed.append(f"w{w}-r{r}")

    async def sealer(wait: bool) -> int:
        sealed = 0
        while not stop.is_set():
            sealed += await audit.seal(wide_engine, wait=wait, batch=7)
            await asyncio.sleep(0.002)
        return sealed

    sealers = [asyncio.create_task(sealer(True)), asyncio.create_task(sealer(False))]
    await asyncio.gather(*(writer(w) for w in range(writers)))
    stop.set()
    sealed = sum(await asyncio.gather(*sealers)) + await _seal_all(wide_engine)
    assert sealed == 2 * len(committed)
    assert await _verify(wide_engine) == 2 * len(committed)
    chain = await _chain(wide_engine)
    _assert_links(chain)
    assert sorted({r.entity_id for r in chain}) == sorted(committed)
    assert len({r.id for r in chain}) == len(chain)
    assert len(await _rows(wide_engine)) == len(chain)


async def test_an_open_transaction_is_sealed_later_not_skipped(engine: AsyncEngine) -> None:
    """A transaction with the smaller id still open while a later one commits and a seal runs:
    its entry is chained by the next seal, after the one that committed first."""
    async with engine.connect() as early, engine.connect() as late:
        await late.begin()
        # `late` takes its transaction id first, so the seal may take it while `early` runs.
        await late.execute(text("SELECT pg_current_xact_id()"))
        await early.begin()
        await audit.append(early, [_entry(1, entity_id="early")])  # id 1
        await audit.append(late, [_entry(2, entity_id="late")])  # id 2
        await late.commit()

        assert await _seal_all(engine) == 1  # `early`'s entry is not visible to count yet
        chain = await _chain(engine)
        assert [(r.id, r.seq, r.entity_id) for r in chain] == [(2, 1, "late")]
        assert await _verify(engine) == 1

        await early.commit()
    assert await _seal_all(engine) == 1
    chain = await _chain(engine)
    assert [(r.id, r.seq, r.entity_id) for r in chain] == [(2, 1, "late"), (1, 2, "early")]
    _assert_links(chain)
    assert await _verify(engine) == 2


async def test_entries_after_an_open_transaction_wait_for_it(engine: AsyncEngine) -> None:
    """While a writing transaction is open, entries committed after it started stay unsealed
    (reported as such) and are sealed once it ends."""
    async with engine.connect() as slow:
        await slow.begin()
        await audit.append(slow, [_entry(1, entity_id="slow")])
        await _append_in_units(engine, [2])
        assert await audit.seal(engine) == 0
        assert await _report(engine) == audit.ChainReport(verified=0, unsealed=2)
        await slow.commit()
    assert await _seal_all(engine) == 3
    assert await _report(engine) == audit.ChainReport(verified=3, unsealed=0)
    assert [r.entity_id for r in await _chain(engine)] == ["slow", "1", "2"]


# -- append-only and tampering ------------------------------------------------------------------


async def test_update_and_delete_are_refused(engine: AsyncEngine) -> None:
    await _sealed(engine, [2])
    await _append_in_units(engine, [1])  # id 3, unsealed
    h = "'\\x" + "ab" * 32 + "'::bytea"
    statements = [
        "UPDATE audit_log SET amount = amount + 1 WHERE id = 1",
        "UPDATE audit_log SET details = '{}'::jsonb",
        "UPDATE audit_log SET hash = prev_hash WHERE id = 2",
        "UPDATE audit_log SET seq = 7 WHERE id = 2",
        # Filling the seal columns is allowed only if nothing else changes...
        f"UPDATE audit_log SET seq = 3, prev_hash = {h}, hash = {h}, amount = 1 WHERE id = 3",
        # ...and only all of them at once.
        "UPDATE audit_log SET seq = 3 WHERE id = 3",
        "DELETE FROM audit_log WHERE id = 2",
        "DELETE FROM audit_log WHERE id = 3",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        # Writers cannot place an entry in the chain themselves.
        (
            "INSERT INTO audit_log (at, actor, action, entity_type, entity_id, details, seq, prev_hash, hash)"
            f" VALUES (now(), 'api', 'x', 'mix', 'm', '{{}}', 9, {h}, {h})"
        ),
    ]
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))
    for statement in [
        "UPDATE audit_chain_head SET seq = seq - 1",
        "UPDATE audit_chain_head SET legacy_seq = 5, seq = seq + 1",
        "DELETE FROM audit_chain_head",
        "TRUNCATE audit_chain_head",
    ]:
        with pytest.raises(DBAPIError, match=r"only moves forward|append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))
    rows = await _rows(engine)
    assert [(r.id, r.seq) for r in rows] == [(1, 1), (2, 2), (3, None)]
    assert rows[0].amount == 10**18 + 1
    assert await _verify(engine) == 3


async def test_the_trigger_lets_the_seal_columns_be_filled_once(engine: AsyncEngine) -> None:
    await _append_in_units(engine, [1])
    h = "'\\x" + "ab" * 32 + "'::bytea"
    fill = text(f"UPDATE audit_log SET seq = 1, prev_hash = {h}, hash = {h} WHERE id = 1")
    async with engine.connect() as conn:
        await conn.begin()
        assert (await conn.execute(fill)).rowcount == 1
        with pytest.raises(DBAPIError, match="append-only"):
            async with conn.begin_nested():
                await conn.execute(fill)  # a second time: the columns are no longer NULL
        await conn.rollback()  # a forged seal like this one would not verify anyway


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
        "UPDATE audit_log SET id = 30 WHERE id = 3",
    ],
)
async def test_tampering_is_detected(engine: AsyncEngine, statement: str) -> None:
    await _sealed(engine, [2, 3])
    assert await _verify(engine) == 5
    await _tamper(engine, statement)
    with pytest.raises(AuditChainBroken, match=r"audit entry (3|30) at position 3 was altered"):
        await _verify(engine)
    # The trigger is back on.
    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM audit_log WHERE id = 5"))


async def test_swapped_positions_are_detected(engine: AsyncEngine) -> None:
    await _sealed(engine, [4])
    await _tamper(engine, "UPDATE audit_log SET seq = -seq WHERE id = 2")
    await _tamper(engine, "UPDATE audit_log SET seq = 2 WHERE id = 3")
    await _tamper(engine, "UPDATE audit_log SET seq = 3 WHERE id = 2")
    with pytest.raises(AuditChainBroken, match=r"audit entry 3 at position 2: prev_hash"):
        await _verify(engine)


async def test_rehashed_entry_breaks_the_next_link(engine: AsyncEngine) -> None:
    """Rewriting an entry's hash too (a forger recomputing it) breaks the following entry."""
    await _sealed(engine, [5])
    chain = await _chain(engine)
    forged = SimpleNamespace(**{**dict(chain[1]._mapping), "amount": 1})
    new_hash = _independent_hash(bytes(forged.prev_hash), forged)
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        await conn.execute(
            text("UPDATE audit_log SET amount = 1, hash = :h WHERE id = :id"), {"h": new_hash, "id": chain[1].id}
        )
        await conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))
    with pytest.raises(AuditChainBroken, match=rf"audit entry {chain[2].id} at position 3: prev_hash"):
        await _verify(engine)


async def test_missing_entry_is_detected(engine: AsyncEngine) -> None:
    await _sealed(engine, [4])
    await _tamper(engine, "DELETE FROM audit_log WHERE id = 2")
    with pytest.raises(AuditChainBroken, match=r"audit entry at position 2 is missing \(found entry 3 at position 3\)"):
        await _verify(engine)


async def test_deleting_the_last_entry_is_detected(engine: AsyncEngine) -> None:
    await _sealed(engine, [4])
    await _tamper(engine, "DELETE FROM audit_log WHERE seq = 4")
    with pytest.raises(AuditChainBroken, match=r"audit entry at position 4 is missing: the chain ends at position 3"):
        await _verify(engine)
    # The sealer continues from the head, not from the newest row left, so the gap stays.
    await _append_in_units(engine, [1])
    assert await _seal_all(engine) == 1
    with pytest.raises(AuditChainBroken, match=r"audit entry at position 4 is missing \(found entry 5 at position 5\)"):
        await _verify(engine)


async def test_unsealing_an_entry_to_hide_it_is_detected(engine: AsyncEngine) -> None:
    """Clearing an entry's seal columns would let the sealer chain it again, elsewhere."""
    await _sealed(engine, [3])
    await _tamper(engine, "UPDATE audit_log SET seq = NULL, prev_hash = NULL, hash = NULL WHERE id = 2")
    with pytest.raises(AuditChainBroken, match=r"audit entry at position 2 is missing"):
        await _verify(engine)


async def test_a_missing_head_is_detected(engine: AsyncEngine) -> None:
    await _sealed(engine, [1])
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE audit_chain_head DISABLE TRIGGER audit_chain_head_forward"))
        await conn.execute(text("DELETE FROM audit_chain_head"))
        await conn.execute(text("ALTER TABLE audit_chain_head ENABLE TRIGGER audit_chain_head_forward"))
    with pytest.raises(AuditChainBroken, match="head"):
        await _verify(engine)
    with pytest.raises(AuditChainBroken, match="head"):
        await audit.seal(engine)


async def test_verify_in_small_batches(engine: AsyncEngine) -> None:
    await _append_in_units(engine, [7, 6])
    await _seal_all(engine)
    async with engine.connect() as conn:
        assert await audit.verify(conn, batch=2) == 13
        assert await audit.verify(conn, batch=13) == 13
    await _tamper(engine, "UPDATE audit_log SET actor = 'admin' WHERE id = 12")
    async with engine.connect() as conn:
        with pytest.raises(AuditChainBroken, match=r"audit entry 12\b"):
            await audit.verify(conn, batch=5)


# -- the unit of work ---------------------------------------------------------------------------


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
    assert await _verify(engine) == 1
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


# -- the migration ------------------------------------------------------------------------------


@pytest.fixture
def empty_database(pg_server_url: str) -> Iterator[str]:
    """A libpq URI to a new database with no schema at all."""
    name = f"mh_a_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_entries_chained_before_0007_still_verify_and_the_chain_continues(empty_database: str) -> None:
    upgrade(empty_database, "0006")
    # Three entries chained as revision 0006 did: by id, hashes without seq.
    prev = GENESIS_HASH
    base = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)
    with psycopg.connect(empty_database) as conn:
        for i in range(1, 4):
            row = SimpleNamespace(
                id=i,
                at=base + timedelta(seconds=i),
                actor="worker",
                action="deposit.seen",
                entity_type="deposit",
                entity_id=str(i),
                asset="ETH",
                amount=10**18 + i,
                details={"i": i},
            )
            digest = _independent_hash(prev, row, with_seq=False)
            conn.execute(
                "INSERT INTO audit_log (id, at, actor, action, entity_type, entity_id, asset, amount, details,"
                " prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (i, row.at, row.actor, row.action, row.entity_type, row.entity_id, row.asset, row.amount,
                 json.dumps(row.details), prev, digest),
            )  # fmt: skip
            prev = digest
        conn.execute("SELECT setval(pg_get_serial_sequence('audit_log', 'id'), 3)")
    upgrade(empty_database)
    engine = make_engine(empty_database, pool_size=2)
    try:
        async with engine.connect() as conn:
            head = (await conn.execute(select(audit_chain_head))).one()
        assert (head.seq, bytes(head.hash), head.legacy_seq) == (3, prev, 3)
        assert await _verify(engine) == 3
        await _append_in_units(engine, [2])
        assert await _verify(engine) == 5
        chain = await _chain(engine)
        assert [(r.id, r.seq) for r in chain] == [(i, i) for i in range(1, 6)]
        assert bytes(chain[3].prev_hash) == prev
        assert bytes(chain[4].hash) == _independent_hash(bytes(chain[4].prev_hash), chain[4])
        # A legacy entry edited behind the trigger's back is caught like any other.
        await _tamper(engine, "UPDATE audit_log SET amount = 1 WHERE id = 2")
        with pytest.raises(AuditChainBroken, match=r"audit entry 2 at position 2 was altered"):
            await _verify(engine)
    finally:
        await engine.dispose()
    # Revision 0006 chains by id and could not verify entries sealed since: no downgrade.
    with pytest.raises(DBAPIError, match="cannot verify them"):
        command.downgrade(alembic_config(empty_database), "0006")


def test_0007_downgrades_and_upgrades_with_legacy_entries_only(empty_database: str) -> None:
    upgrade(empty_database, "0006")
    with psycopg.connect(empty_database) as conn:
        conn.execute(
            "INSERT INTO audit_log (at, actor, action, entity_type, entity_id, details, prev_hash, hash)"
            " VALUES (now(), 'api', 'mix.created', 'mix', 'm', '{}', %s, %s)",
            (GENESIS_HASH, b"\x01" * 32),
        )
    upgrade(empty_database)
    command.downgrade(alembic_config(empty_database), "0006")
    with psycopg.connect(empty_database) as conn:
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'audit_log'"
            ).fetchall()
        }
        assert {"seq", "xid"}.isdisjoint(columns)
        assert conn.execute("SELECT to_regclass('audit_chain_head')").fetchone() == (None,)
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("DELETE FROM audit_log")
    upgrade(empty_database)
