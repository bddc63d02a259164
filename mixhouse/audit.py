"""The append-only, hash-chained audit log of every state change and money movement.

Writing and chaining are separate, so that writers never wait for one another:

* **Writers** (:func:`append`, in the caller's transaction) only INSERT. The row gets its ``id``
  from the sequence and ``xid``, the writing transaction's id (``pg_current_xact_id()``, a
  column default); its chain columns ``seq``, ``prev_hash`` and ``hash`` stay ``NULL``. No lock
  is taken, so audited transactions commit in parallel.
* The **sealer** (:func:`seal`, a periodic worker task every second, and the first step of
  :func:`verify`) chains the entries written since its last run: it gives each its position
  ``seq`` (1, 2, 3... without gaps), ``prev_hash`` (the hash at ``seq - 1``, 32 zero bytes for
  the first) and ``hash``, and moves ``audit_chain_head`` to the new last position, all in one
  transaction. Only entries whose transaction is certainly finished are taken: ``xid`` below
  the ``xmin`` of the sealer's snapshot. An entry of a transaction still running then, even
  one with a smaller ``id`` than entries already sealed, is sealed by a later run, never
  skipped. A batch is sealed in ``(xid, id)`` order, so the chain order is the seal order
  (``seq``), not ``id``. One sealer at a time: it holds a transaction advisory lock that
  writers never take.

Each entry's hash is ``SHA-256(prev_hash || canonical JSON of the entry)``, the entry being its
``seq``, ``id``, ``at``, actor, action, entity, asset, amount and details as stored. Entries
chained before revision 0007 (positions up to ``audit_chain_head.legacy_seq``, where
``seq = id``) hash the same fields without ``seq``.

A trigger refuses DELETE, TRUNCATE and every UPDATE except the sealer's one-time fill of the
``NULL`` chain columns. :func:`verify` recomputes the chain, so an edit made behind the
trigger's back (by an owner who disables it) is still detected: a changed entry's hash, a
removed entry's gap, removed newest entries by the head.

A long-running writing transaction holds ``xmin`` back and delays the sealing of every entry
written after it started (not only its own) until it ends; nothing is lost meanwhile. ``xmin``
is server-wide: transactions of other databases on the same server count too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mixhouse.db.tables import audit_chain_head, audit_log
from mixhouse.errors import AuditChainBroken

GENESIS_HASH = bytes(32)
_SEAL_LOCK = 0x61756469745F7365  # "audit_se"; taken by the sealer only, never by writers

_SEAL_SQL = text(
    """
    UPDATE audit_log AS a SET seq = v.seq, prev_hash = v.prev_hash, hash = v.hash
    FROM unnest(CAST(:ids AS bigint[]), CAST(:seqs AS bigint[]), CAST(:prevs AS bytea[]), CAST(:hashes AS bytea[]))
        AS v(id, seq, prev_hash, hash)
    WHERE a.id = v.id AND a.seq IS NULL
    """
)


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


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What :func:`verify_chain` found.

    Attributes:
        verified: sealed entries whose hashes were recomputed (positions 1..verified).
        unsealed: entries not chained yet (their transaction was still running at the seal,
            or they were written since).
    """

    verified: int
    unsealed: int


def entry_hash(prev_hash: bytes, seq: int | None, entry_id: int, at: datetime, entry: AuditEntry) -> bytes:
    """The chain hash of one entry (see module docstring).

    Args:
        prev_hash: the hash at the previous position (:data:`GENESIS_HASH` for the first).
        seq: the entry's chain position; ``None`` for an entry chained before revision 0007,
            whose hash does not cover it.
        entry_id: the row's ``id``.
        at: the row's timestamp (hashed in UTC, to the microsecond PostgreSQL stores).
        entry: the entry's fields as stored.

    Returns:
        32 bytes.
    """
    body: dict[str, Any] = {
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
    if seq is not None:
        body["seq"] = seq
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(prev_hash + canonical).digest()


_APPEND_SQL = text(
    """
    INSERT INTO audit_log (at, actor, action, entity_type, entity_id, asset, amount, details)
    SELECT v.at, v.actor, v.action, v.entity_type, v.entity_id, v.asset, v.amount, v.details
    FROM unnest(
        CAST(:at AS timestamptz[]), CAST(:actor AS text[]), CAST(:action AS text[]),
        CAST(:entity_type AS text[]), CAST(:entity_id AS text[]), CAST(:asset AS text[]),
        CAST(:amount AS numeric[]), CAST(:details AS jsonb[])
    ) WITH ORDINALITY AS v(at, actor, action, entity_type, entity_id, asset, amount, details, n)
    ORDER BY v.n
    """
)


async def append(conn: AsyncConnection, entries: list[AuditEntry]) -> None:
    """Insert ``entries``, unsealed, in the caller's transaction (which must be open).

    Takes no lock: the entries are chained by :func:`seal` once the transaction has ended
    (rolled back, they simply never appear). Their ``id`` order follows ``entries``: one
    statement over arrays, rows inserted in array order (a payout round writes hundreds of
    entries; as many statements took several times longer).

    Raises:
        TypeError: an amount is not an ``int`` (base units).
    """
    if not entries:
        return
    for entry in entries:
        if entry.amount is not None and (not isinstance(entry.amount, int) or isinstance(entry.amount, bool)):
            raise TypeError(f"amounts are int base units, got {type(entry.amount).__name__}")
    # Microseconds: what PostgreSQL stores, and what the sealer hashes.
    at = datetime.now(UTC)
    await conn.execute(
        _APPEND_SQL,
        {
            "at": [at] * len(entries),
            "actor": [e.actor for e in entries],
            "action": [e.action for e in entries],
            "entity_type": [e.entity_type for e in entries],
            "entity_id": [e.entity_id for e in entries],
            "asset": [e.asset for e in entries],
            "amount": [e.amount for e in entries],
            # What the JSONB column type would write (json.dumps), read back as stored.
            "details": [json.dumps(dict(e.details)) for e in entries],
        },
    )


def _stored_entry(row: Row[Any]) -> AuditEntry:
    return AuditEntry(
        action=row.action,
        entity_type=row.entity_type,
        entity_id=row.entity_id,
        actor=row.actor,
        asset=row.asset,
        amount=row.amount,
        details=row.details,
    )


async def _head(conn: AsyncConnection) -> Row[Any]:
    head = (await conn.execute(select(audit_chain_head))).first()
    if head is None:
        raise AuditChainBroken("the audit chain head (audit_chain_head) is missing")
    return head


async def _seal_batch(conn: AsyncConnection, batch: int, *, wait: bool) -> int | None:
    """Seal up to ``batch`` entries in ``conn``'s open transaction; ``None`` if another sealer
    holds the lock and ``wait`` is false."""
    if wait:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SEAL_LOCK})
    elif not (await conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _SEAL_LOCK})).scalar_one():
        return None
    # Read after the lock: in READ COMMITTED this statement sees the previous sealer's commit.
    # The head, not the newest row, is where the chain continues: if the newest entries were
    # deleted behind the trigger's back, continuing from the head keeps that gap detectable.
    head = await _head(conn)
    # xid < xmin of this statement's snapshot: the writing transaction had ended before the
    # snapshot was taken, so a committed entry is visible here and a rolled-back one is gone.
    # Entries of transactions still running stay for a later batch.
    rows = (
        await conn.execute(
            select(audit_log)
            .where(audit_log.c.seq.is_(None), audit_log.c.xid < func.pg_snapshot_xmin(func.pg_current_snapshot()))
            .order_by(audit_log.c.xid, audit_log.c.id)
            .limit(batch)
        )
    ).all()
    if not rows:
        return 0
    prev_hash, seq = bytes(head.hash), int(head.seq)
    ids, seqs, prevs, hashes = [], [], [], []
    for row in rows:
        seq += 1
        digest = entry_hash(prev_hash, seq, row.id, row.at, _stored_entry(row))
        ids.append(row.id)
        seqs.append(seq)
        prevs.append(prev_hash)
        hashes.append(digest)
        prev_hash = digest
    result = await conn.execute(_SEAL_SQL, {"ids": ids, "seqs": seqs, "prevs": prevs, "hashes": hashes})
    if result.rowcount != len(ids):
        # Only possible if the lock was bypassed; the transaction is rolled back by the raise.
        raise AuditChainBroken(f"sealed {result.rowcount} of {len(ids)} audit entries: another sealer ran")
    await conn.execute(update(audit_chain_head).values(seq=seq, hash=prev_hash))
    return len(ids)


async def seal(target: AsyncEngine | AsyncConnection, *, batch: int = 5_000, wait: bool = True) -> int:
    """Chain every entry whose writing transaction has ended (see module docstring).

    Args:
        target: an engine (each batch commits in its own transaction), a connection outside a
            transaction (likewise, on that connection), or a connection inside a transaction,
            which then holds the seal and the sealer's lock until the caller ends it.
        batch: entries per batch (and per transaction, when the function commits).
        wait: wait for a sealer already running (true), or return at once (false), as the
            periodic task does since that sealer does the work.

    Returns:
        How many entries were sealed.

    Raises:
        AuditChainBroken: the chain head row is missing.
    """
    total = 0
    while True:
        sealed: int | None
        if isinstance(target, AsyncEngine):
            async with target.begin() as conn:
                sealed = await _seal_batch(conn, batch, wait=wait)
        elif target.in_transaction():
            sealed = await _seal_batch(target, batch, wait=wait)
        else:
            async with target.begin():
                sealed = await _seal_batch(target, batch, wait=wait)
        if sealed is None:
            return total
        total += sealed
        if sealed < batch:
            return total


async def verify_chain(conn: AsyncConnection, *, batch: int = 5_000, seal_first: bool = True) -> ChainReport:
    """Seal what can be sealed (see :func:`seal` for how ``conn``'s transaction is used), then
    recompute the whole chain in ``seq`` order.

    Returns:
        The number of entries verified and of entries left unsealed.

    Raises:
        AuditChainBroken: a position is missing or duplicated, an entry's ``prev_hash`` or
            ``hash`` does not match, the chain ends before the head's position, or the head's
            hash is not the hash at its position. The message names the entry's id and
            position.
    """
    if seal_first:
        await seal(conn, batch=batch)
    # The head first: a sealer running meanwhile only adds positions after it.
    head = await _head(conn)
    head_seq, legacy_seq = int(head.seq), int(head.legacy_seq)
    prev_hash = GENESIS_HASH
    expected = 1
    hash_at_head = GENESIS_HASH
    while True:
        stmt = select(audit_log).where(audit_log.c.seq.is_not(None))
        if expected > 1:
            stmt = stmt.where(audit_log.c.seq >= expected)
        rows = (await conn.execute(stmt.order_by(audit_log.c.seq).limit(batch))).all()
        for row in rows:
            if row.seq != expected:
                raise AuditChainBroken(
                    f"audit entry at position {expected} is missing (found entry {row.id} at position {row.seq})"
                )
            if bytes(row.prev_hash) != prev_hash:
                raise AuditChainBroken(
                    f"audit entry {row.id} at position {row.seq}: prev_hash does not match position {row.seq - 1}"
                )
            legacy = row.seq <= legacy_seq
            if legacy and row.seq != row.id:
                raise AuditChainBroken(f"audit entry {row.id} at position {row.seq}: chained before 0007 with seq = id")
            digest = entry_hash(prev_hash, None if legacy else row.seq, row.id, row.at, _stored_entry(row))
            if digest != bytes(row.hash):
                raise AuditChainBroken(
                    f"audit entry {row.id} at position {row.seq} was altered: its hash does not verify"
                )
            prev_hash = digest
            if row.seq == head_seq:
                hash_at_head = digest
            expected += 1
        if len(rows) < batch:
            break
    verified = expected - 1
    if verified < head_seq:
        raise AuditChainBroken(
            f"audit entry at position {verified + 1} is missing: the chain ends at position {verified}"
            f" but {head_seq} entries were sealed"
        )
    if hash_at_head != bytes(head.hash):
        raise AuditChainBroken(f"audit chain head does not match the entry at position {head_seq}")
    unsealed = (
        await conn.execute(select(func.count()).select_from(audit_log).where(audit_log.c.seq.is_(None)))
    ).scalar_one()
    return ChainReport(verified=verified, unsealed=int(unsealed))


async def verify(conn: AsyncConnection, *, batch: int = 5_000) -> int:
    """Seal, then recompute the whole chain (:func:`verify_chain`).

    Returns:
        The number of sealed entries verified.

    Raises:
        AuditChainBroken: see :func:`verify_chain`.
    """
    return (await verify_chain(conn, batch=batch)).verified
