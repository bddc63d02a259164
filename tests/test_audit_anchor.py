"""Signed checkpoints of the audit chain (``mixhouse.audit_anchor``), on a real PostgreSQL: the
two attacks the hash chain alone cannot see — deleting the newest entries and moving the head
back, and rewriting the log with every hash recomputed — are caught against checkpoints."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.audit import GENESIS_HASH, AuditEntry
from mixhouse.audit_anchor import (
    Checkpoint,
    load_checkpoints,
    make_checkpoint,
    new_signing_key,
    signing_key,
    verify_checkpoints,
    write_checkpoint,
)
from mixhouse.db.tables import audit_log
from mixhouse.errors import AuditChainBroken, InvalidInput
from mixhouse.unit import unit


async def _entries(engine: AsyncEngine, n: int, start: int = 0) -> None:
    async with unit(engine) as work:
        for i in range(start, start + n):
            work.audit(AuditEntry("deposit.seen", "deposit", str(i), asset="ETH", amount=10**18 + i, details={"i": i}))


async def _checkpoint(engine: AsyncEngine, key_hex: str, directory: Path) -> Checkpoint:
    async with engine.connect() as conn:
        cp = await make_checkpoint(conn, signing_key(key_hex))
    write_checkpoint(directory, cp)
    return cp


async def _owner(engine: AsyncEngine, *statements: str, params: dict[str, object] | None = None) -> None:
    """What the table owner can do behind the triggers' backs."""
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
        await conn.execute(text("ALTER TABLE audit_chain_head DISABLE TRIGGER USER"))
        for statement in statements:
            await conn.execute(text(statement), params or {})
        await conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER USER"))
        await conn.execute(text("ALTER TABLE audit_chain_head ENABLE TRIGGER USER"))


async def _check(engine: AsyncEngine, directory: Path, public_key: bytes) -> int:
    async with engine.connect() as conn:
        await audit.verify_chain(conn)  # the chain is internally consistent in every case here
        return (await verify_checkpoints(conn, load_checkpoints(directory), public_key)).checked


KEY = "11" * 32


async def test_checkpoints_of_an_honest_log_verify(engine: AsyncEngine, tmp_path: Path) -> None:
    key = signing_key(KEY)
    first = await _checkpoint(engine, KEY, tmp_path)
    assert (first.seq, first.hash) == (0, GENESIS_HASH)
    await _entries(engine, 5)
    second = await _checkpoint(engine, KEY, tmp_path)
    assert second.seq == 5
    await _entries(engine, 3, start=5)
    assert await _check(engine, tmp_path, key.public_key.format()) == 2
    # The file form round-trips and the signature covers every field.
    assert Checkpoint.from_json(second.to_json()) == second
    assert second.signed_by(key.public_key.format(compressed=False))


async def test_deleting_the_newest_entries_and_the_head_is_caught(engine: AsyncEngine, tmp_path: Path) -> None:
    key = signing_key(KEY)
    await _entries(engine, 4)
    await _checkpoint(engine, KEY, tmp_path)
    # Delete position 4 and move the head back to position 3: the chain alone still verifies.
    await _owner(
        engine,
        "DELETE FROM audit_log WHERE seq = 4",
        "UPDATE audit_chain_head SET seq = 3, hash = (SELECT hash FROM audit_log WHERE seq = 3)",
    )
    async with engine.connect() as conn:
        assert (await audit.verify_chain(conn)).verified == 3
    with pytest.raises(AuditChainBroken, match=r"truncated: checkpoint of .* saw position 4, the chain now ends at 3"):
        await _check(engine, tmp_path, key.public_key.format())


async def test_a_rewrite_with_recomputed_hashes_is_caught(engine: AsyncEngine, tmp_path: Path) -> None:
    key = signing_key(KEY)
    await _entries(engine, 4)
    await _checkpoint(engine, KEY, tmp_path)
    # Change entry 2's amount and recompute every hash from there, head included.
    await _owner(engine, "UPDATE audit_log SET amount = amount + 1 WHERE seq = 2")
    async with engine.connect() as conn:
        rows = (await conn.execute(select(audit_log).order_by(audit_log.c.seq))).all()
    prev = GENESIS_HASH
    updates = []
    for row in rows:
        entry = AuditEntry(row.action, row.entity_type, row.entity_id, row.actor, row.asset, row.amount, row.details)
        digest = audit.entry_hash(prev, row.seq, row.id, row.at, entry)
        updates.append((row.seq, prev, digest))
        prev = digest
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
        await conn.execute(text("ALTER TABLE audit_chain_head DISABLE TRIGGER USER"))
        for seq, p, h in updates:
            await conn.execute(
                text("UPDATE audit_log SET prev_hash = :p, hash = :h WHERE seq = :s"), {"p": p, "h": h, "s": seq}
            )
        await conn.execute(text("UPDATE audit_chain_head SET hash = :h"), {"h": prev})
        await conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER USER"))
        await conn.execute(text("ALTER TABLE audit_chain_head ENABLE TRIGGER USER"))
    with pytest.raises(AuditChainBroken, match=r"rewritten: the entry at position 4 does not hash"):
        await _check(engine, tmp_path, key.public_key.format())


async def test_forged_or_edited_checkpoints_are_refused(engine: AsyncEngine, tmp_path: Path) -> None:
    key = signing_key(KEY)
    await _entries(engine, 2)
    cp = await _checkpoint(engine, KEY, tmp_path)
    # Signed by someone else: refused under the operator's key.
    async with engine.connect() as conn:
        forged = await make_checkpoint(conn, new_signing_key())
        with pytest.raises(AuditChainBroken, match="signature does not verify"):
            await verify_checkpoints(conn, [forged], key.public_key.format())
        # An edited position (to hide a later truncation) breaks the signature.
        edited = Checkpoint(cp.seq - 1, cp.hash, cp.at, cp.public_key, cp.signature)
        with pytest.raises(AuditChainBroken, match="signature does not verify"):
            await verify_checkpoints(conn, [edited], key.public_key.format())
    # The first checkpoint of a position is kept.
    path = write_checkpoint(tmp_path, forged)
    assert Checkpoint.from_json(path.read_text()) == cp
    with pytest.raises(InvalidInput):
        Checkpoint.from_json('{"format": "something else"}')
    with pytest.raises(InvalidInput):
        signing_key("zz")


async def test_the_cli_writes_and_checks_checkpoints(database_url: str, engine: AsyncEngine, tmp_path: Path) -> None:
    key = signing_key(KEY)
    await _entries(engine, 3)
    env = {
        **os.environ,
        "MIXHOUSE_DATABASE_URL": database_url,
        "MIXHOUSE_AUDIT_CHECKPOINT_KEY": KEY,
        "MIXHOUSE_EVM_ENABLED": "false",
    }
    made = await _cli(env, "checkpoint", "--dir", str(tmp_path))
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "checkpoint-000000000003.json").exists()
    pub = key.public_key.format().hex()
    ok = await _cli(env, "verify", "--checkpoints", str(tmp_path), "--public-key", pub)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "matches 1 checkpoints" in ok.stdout
    await _owner(
        engine,
        "DELETE FROM audit_log WHERE seq = 3",
        "UPDATE audit_chain_head SET seq = 2, hash = (SELECT hash FROM audit_log WHERE seq = 2)",
    )
    broken = await _cli(env, "verify", "--checkpoints", str(tmp_path), "--public-key", pub)
    assert broken.returncode == 1
    assert "truncated" in broken.stdout


async def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mixhouse", "audit", *args]
    return await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, check=False)
