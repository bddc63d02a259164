"""Pre-generated deposit keys for a slow signer (issue 12 part 4).

A PKCS#11 token generates a key pair in milliseconds to hundreds of milliseconds (SoftHSM2:
~7 keys/s on the test machine, ``benchmarks/signer.py``). Issuing a deposit address made the key
inside the mix's transaction, with the asset's index counter row-locked: every mix creation of
the asset, in every API process, waited for the token in turn. The buffer moves that work ahead:

* :func:`top_up` (run in the background by :func:`run_key_buffer`) allocates a block of indexes
  from ``key_counters`` in a short transaction of its own, makes their keys (the slow part, in a
  thread, outside any transaction), and stores ``(asset, index, address)`` rows in
  ``key_buffer``. An allocated index is never allocated again, so a key is made for one index
  once, by one process; a filler that dies mid-block leaves unused indexes (harmless gaps).
* :func:`take_key`, in the mix's own transaction, deletes the lowest buffered row of the asset
  under ``FOR UPDATE SKIP LOCKED`` and returns it: two API processes never take one row (the
  second skips the first's locked row), and a mix that rolls back puts its key back.

One filler at a time per asset across processes: each run holds a session-level PostgreSQL
advisory lock on ``hashtext('mixhouse key_buffer ' || asset)``; another process's filler that
finds it taken does nothing that round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mixhouse.db.tables import key_buffer, key_counters
from mixhouse.errors import MixhouseError

log = structlog.get_logger(__name__)

_TRY_LOCK = text("SELECT pg_try_advisory_lock(hashtext('mixhouse key_buffer ' || :asset))")
_UNLOCK = text("SELECT pg_advisory_unlock(hashtext('mixhouse key_buffer ' || :asset))")
# Keys made per block: one short counter transaction per block, the rows stored per block.
DEFAULT_BLOCK = 20


async def take_key(conn: AsyncConnection, asset: str) -> tuple[int, str] | None:
    """Take the buffered deposit key of ``asset`` with the lowest index, in ``conn``'s
    transaction (the row is gone once it commits, back if it rolls back).

    Returns:
        ``(key index, deposit address)``, or ``None`` if the buffer of ``asset`` is empty (or
        every row is being taken by other transactions right now).
    """
    oldest = (
        select(key_buffer.c.key_index)
        .where(key_buffer.c.asset == asset)
        .order_by(key_buffer.c.key_index)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    row = (
        await conn.execute(
            key_buffer.delete()
            .where(key_buffer.c.asset == asset, key_buffer.c.key_index == oldest)
            .returning(key_buffer.c.key_index, key_buffer.c.address)
        )
    ).first()
    return None if row is None else (int(row.key_index), str(row.address))


async def buffered(conn: AsyncConnection, asset: str) -> int:
    """How many keys of ``asset`` are buffered (not yet taken)."""
    count = (await conn.execute(select(func.count()).where(key_buffer.c.asset == asset))).scalar_one()
    return int(count)


async def _allocate(engine: AsyncEngine, asset: str, count: int) -> range:
    """``count`` fresh indexes of the counter ``asset`` (as ``next_key_index`` allocates them:
    the same counter, so the two never hand out one index), in a transaction of their own."""
    async with engine.begin() as conn:
        end = (
            await conn.execute(
                insert(key_counters)
                .values(asset=asset, next_index=count)
                .on_conflict_do_update(
                    index_elements=[key_counters.c.asset], set_={"next_index": key_counters.c.next_index + count}
                )
                .returning(key_counters.c.next_index)
            )
        ).scalar_one()
    return range(int(end) - count, int(end))


async def top_up(
    engine: AsyncEngine,
    asset: str,
    address_of: Callable[[int], str],
    *,
    target: int,
    block: int = DEFAULT_BLOCK,
) -> int:
    """Fill the buffer of ``asset`` up to ``target`` keys, unless another process is filling it.

    Args:
        address_of: the deposit address of an index, making its key (``adapter.deposit_address``;
            called in a worker thread: a token's key generation blocks).
        target: keys to keep buffered.
        block: indexes allocated (and rows stored) at a time.

    Returns:
        Keys added (0 if full, or if another process holds the asset's filler lock).

    Raises:
        SignerError: the token failed (the block's indexes stay unused; the next run retries).
        sqlalchemy.exc.DBAPIError: the database failed.
    """
    added = 0
    async with engine.connect() as lock_conn:
        if not (await lock_conn.execute(_TRY_LOCK, {"asset": asset})).scalar_one():
            return 0
        try:
            await lock_conn.commit()  # the session lock outlives this statement's transaction
            while True:
                async with engine.connect() as conn:
                    missing = target - await buffered(conn, asset)
                if missing <= 0:
                    return added
                indexes = await _allocate(engine, asset, min(block, missing))
                rows = []
                for index in indexes:
                    address = await asyncio.to_thread(address_of, index)
                    rows.append({"asset": asset, "key_index": index, "address": address})
                async with engine.begin() as conn:
                    await conn.execute(key_buffer.insert(), rows)
                added += len(rows)
        finally:
            await lock_conn.execute(_UNLOCK, {"asset": asset})
            await lock_conn.commit()


async def run_key_buffer(
    engine: AsyncEngine,
    sources: Mapping[str, Callable[[int], str]],
    *,
    target: int,
    interval_seconds: float,
    block: int = DEFAULT_BLOCK,
) -> None:
    """Keep the buffer of every asset of ``sources`` (asset -> ``address_of``) at ``target``
    keys, checking every ``interval_seconds``, until cancelled. A failure (token gone, database
    down) is logged (its class, never a secret) and retried next round."""
    while True:
        for asset, address_of in sources.items():
            try:
                added = await top_up(engine, asset, address_of, target=target, block=block)
            except (MixhouseError, DBAPIError, OSError) as exc:  # SignerError is a MixhouseError
                log.warning("key buffer top-up failed", asset=asset, error=type(exc).__name__)
            else:
                if added:
                    log.info("key buffer topped up", asset=asset, added=added)
        await asyncio.sleep(interval_seconds)
