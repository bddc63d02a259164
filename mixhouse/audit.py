"""The append-only, hash-chained audit log of every state change and money movement.

Each entry's hash is ``SHA-256(prev_hash || canonical JSON of the entry)``; the first entry's
``prev_hash`` is 32 zero bytes. A database trigger forbids UPDATE and DELETE on the table, and
:func:`verify` recomputes the chain, so an edit made behind the trigger's back (by a superuser
who drops it) is still detected.

Writers serialise on a transaction-scoped advisory lock while they read the last hash and
insert, so the chain has no forks. The lock is taken last in a transaction (see
:class:`mixhouse.unit.Unit`), which keeps it short and avoids lock-order deadlocks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from mixhouse.db.tables import audit_log
from mixhouse.errors import AuditChainBroken

GENESIS_HASH = bytes(32)
_AUDIT_LOCK = 0x61756469745F6C6F  # "audit_lo"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry before it is written.

    Attributes:
        action: dotted verb, e.g. ``"deposit.frozen"``, ``"send.broadcast"``.
        entity_type: ``"mix"``, ``"deposit"``, ``"send"``, ``"reconciliation"``...
        entity_id: the entity's id as text.
        actor: who caused it: ``"api"``, ``"worker"``, ``"admin"``, ``"cli"``.
        asset: the asset moved, if any.
        amount: base units moved, if any.
        details: JSON-serialisable context (amounts inside are decimal strings or ints).
    """

    action: str
    entity_type: str
    entity_id: str
    actor: str = "worker"
    asset: str | None = None
    amount: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


def entry_hash(prev_hash: bytes, entry_id: int, at: datetime, entry: AuditEntry) -> bytes:
    """The chain hash of one entry (see module docstring)."""
    body = {
        "id": entry_id,
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": entry.actor,
        "action": entry.action,
        "entity_type": entry.entity_type,
        "entity_id": entry.entity_id,
        "asset": entry.asset,
        "amount": None if entry.amount is None else str(entry.amount),
        "details": entry.details,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(prev_hash + canonical).digest()


async def append(conn: AsyncConnection, entries: list[AuditEntry]) -> None:
    """Append ``entries`` in order, in the caller's transaction (which must be open).

    Takes the audit advisory lock until the transaction ends.
    """
    if not entries:
        return
    await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _AUDIT_LOCK})
    last = (
        await conn.execute(select(audit_log.c.id, audit_log.c.hash).order_by(audit_log.c.id.desc()).limit(1))
    ).first()
    prev_hash = GENESIS_HASH if last is None else bytes(last.hash)
    next_id = 1 if last is None else int(last.id) + 1
    rows = []
    for entry in entries:
        # Microsecond precision: what PostgreSQL stores, so verify() recomputes the same hash.
        at = datetime.now(UTC)
        digest = entry_hash(prev_hash, next_id, at, entry)
        rows.append(
            {
                "id": next_id,
                "at": at,
                "actor": entry.actor,
                "action": entry.action,
                "entity_type": entry.entity_type,
                "entity_id": entry.entity_id,
                "asset": entry.asset,
                "amount": entry.amount,
                "details": dict(entry.details),
                "prev_hash": prev_hash,
                "hash": digest,
            }
        )
        prev_hash = digest
        next_id += 1
    await conn.execute(audit_log.insert(), rows)
    # Keep the serial in step with the explicit ids we chose under the lock.
    await conn.execute(text("SELECT setval(pg_get_serial_sequence('audit_log', 'id'), :v)"), {"v": next_id - 1})


async def verify(conn: AsyncConnection, *, batch: int = 5_000) -> int:
    """Recompute the whole chain.

    Returns:
        The number of entries verified.

    Raises:
        AuditChainBroken: an entry's ``prev_hash`` or ``hash`` does not match, or ids skip.
    """
    prev_hash = GENESIS_HASH
    expected_id = 1
    last_id = 0
    count = 0
    while True:
        rows = (
            await conn.execute(select(audit_log).where(audit_log.c.id > last_id).order_by(audit_log.c.id).limit(batch))
        ).all()
        if not rows:
            return count
        for row in rows:
            if row.id != expected_id:
                raise AuditChainBroken(f"audit entry {expected_id} is missing (found {row.id})")
            if bytes(row.prev_hash) != prev_hash:
                raise AuditChainBroken(f"audit entry {row.id}: prev_hash does not match entry {row.id - 1}")
            entry = AuditEntry(
                action=row.action,
                entity_type=row.entity_type,
                entity_id=row.entity_id,
                actor=row.actor,
                asset=row.asset,
                amount=row.amount,
                details=row.details,
            )
            if entry_hash(prev_hash, row.id, row.at, entry) != bytes(row.hash):
                raise AuditChainBroken(f"audit entry {row.id} was altered: its hash does not verify")
            prev_hash = bytes(row.hash)
            expected_id += 1
            last_id = row.id
            count += 1
