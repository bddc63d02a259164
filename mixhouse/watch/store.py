"""The scanning engine's rows: the block window and the stopped consumers (migration 0021)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.audit import AuditEntry
from mixhouse.db.tables import chain_cursors, watch_blocks, watch_stops
from mixhouse.unit import unit


async def load_window(engine: AsyncEngine, chain: str) -> dict[str, tuple[int, str | None]]:
    """``{hash: (height, parent)}`` of the blocks of ``chain`` kept in ``watch_blocks``."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(watch_blocks.c.hash, watch_blocks.c.height, watch_blocks.c.parent).where(
                watch_blocks.c.chain == chain
            )
        )
        return {str(h): (int(height), None if parent is None else str(parent)) for h, height, parent in rows}


async def save_window(engine: AsyncEngine, chain: str, blocks: dict[str, tuple[int, str | None]], floor: int) -> None:
    """Store ``blocks`` (``{hash: (height, parent)}``) of ``chain`` and drop heights below ``floor``."""
    async with engine.begin() as conn:
        rows = [
            {"chain": chain, "hash": h, "height": height, "parent": parent} for h, (height, parent) in blocks.items()
        ]
        await conn.execute(insert(watch_blocks).values(rows).on_conflict_do_nothing())
        await conn.execute(delete(watch_blocks).where(watch_blocks.c.chain == chain, watch_blocks.c.height < floor))


async def stop_reason(engine: AsyncEngine, chain: str, consumer: str) -> str | None:
    """Why ``consumer`` of ``chain`` is stopped, ``None`` if it is not."""
    async with engine.connect() as conn:
        reason = await conn.scalar(
            select(watch_stops.c.reason).where(watch_stops.c.chain == chain, watch_stops.c.consumer == consumer)
        )
    return None if reason is None else str(reason)


async def stop_consumer(
    engine: AsyncEngine, chain: str, consumer: str, *, height: int, max_depth: int, reason: str
) -> None:
    """Record that a reorg deeper than ``max_depth`` below ``height`` stopped ``consumer``, with its
    ``watch.stopped`` audit entry, in one transaction (a second stop of it changes nothing)."""
    async with unit(engine) as work:
        inserted = await work.conn.execute(
            insert(watch_stops)
            .values(chain=chain, consumer=consumer, height=height, max_depth=max_depth, reason=reason)
            .on_conflict_do_nothing()
            .returning(watch_stops.c.consumer)
        )
        if inserted.first() is not None:
            work.audit(
                AuditEntry(
                    "watch.stopped",
                    "watcher",
                    f"{chain}/{consumer}",
                    details={"height": height, "max_depth": max_depth, "reason": reason},
                )
            )


async def resume_consumer(engine: AsyncEngine, chain: str, consumer: str, *, actor: str = "admin") -> bool:
    """Let a stopped ``consumer`` of ``chain`` run again (the operator has dealt with the reorg),
    audited as ``watch.resumed``. Returns whether it was stopped."""
    async with unit(engine) as work:
        deleted = await work.conn.execute(
            delete(watch_stops)
            .where(watch_stops.c.chain == chain, watch_stops.c.consumer == consumer)
            .returning(watch_stops.c.height)
        )
        row = deleted.first()
        if row is not None:
            work.audit(AuditEntry("watch.resumed", "watcher", f"{chain}/{consumer}", actor=actor))
    return row is not None


@dataclass(frozen=True, slots=True)
class Stop:
    """A consumer stopped by a too-deep reorg: ``chain``, ``consumer``, the position's ``height``,
    the policy's ``max_depth``, the ``reason`` text and when (``stopped_at``, UTC)."""

    chain: str
    consumer: str
    height: int
    max_depth: int
    reason: str
    stopped_at: datetime


async def stops(engine: AsyncEngine) -> list[Stop]:
    """Every stopped consumer, by chain and consumer."""
    async with engine.connect() as conn:
        rows = await conn.execute(select(watch_stops).order_by(watch_stops.c.chain, watch_stops.c.consumer))
        return [Stop(r.chain, r.consumer, int(r.height), int(r.max_depth), r.reason, r.stopped_at) for r in rows]


async def windows(engine: AsyncEngine) -> dict[str, tuple[int, int, int]]:
    """``{chain: (lowest height, highest height, blocks)}`` of the block windows kept."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(
                watch_blocks.c.chain,
                func.min(watch_blocks.c.height),
                func.max(watch_blocks.c.height),
                func.count(),
            ).group_by(watch_blocks.c.chain)
        )
        return {str(chain): (int(low), int(high), int(n)) for chain, low, high, n in rows}


async def deposit_cursors(engine: AsyncEngine) -> list[tuple[str, str | None, int | None, int | None]]:
    """``[(asset, cursor, tip, scanned)]`` of the deposit scans (``chain_cursors``), by asset."""
    async with engine.connect() as conn:
        rows = await conn.execute(select(chain_cursors).order_by(chain_cursors.c.asset))
        return [(str(r.asset), r.cursor, r.tip_height, r.scanned_height) for r in rows]
