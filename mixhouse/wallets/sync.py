"""The sync engine: brings imported addresses up to date from their history source.

Incremental and restartable: each page a source returns is stored together with the new
checkpoint in one transaction, so a process killed mid-sync resumes after the last stored page
and a second sync of an up-to-date address fetches nothing but the tip. Reorgs reported by a
source put the transactions above the rewound height back to unconfirmed before the new page
is stored (those still in the new chain confirm again with it). Statuses: ``pending`` (never
synced), ``syncing``, ``synced``, ``error`` (with the reason; retried at the next run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.db.tables import wallet_addresses
from mixhouse.errors import ChainError, InvalidAddress
from mixhouse.mixer.states import now
from mixhouse.wallets import store
from mixhouse.wallets.records import HistorySource

log = structlog.get_logger(__name__)

SourceFor = Callable[[str], HistorySource | None]


@dataclass(frozen=True, slots=True)
class SyncResult:
    """One address's sync.

    Attributes:
        chain, address: the address.
        pages: pages fetched.
        stored: transaction rows inserted or changed.
        status: the address's status afterwards.
        error: the reason when ``status == "error"``.
    """

    chain: str
    address: str
    pages: int
    stored: int
    status: str
    error: str | None = None


async def sync_address(
    engine: AsyncEngine, source: HistorySource, address: str, *, max_pages: int = 10_000
) -> SyncResult:
    """Sync every imported copy of ``address`` on ``source.chain`` to the source's tip.

    Returns:
        A :class:`SyncResult`; a node or provider failure is recorded as ``error`` status, not
        raised, so one bad address does not stop the others.
    """
    chain = source.chain
    where = (wallet_addresses.c.chain == chain) & (wallet_addresses.c.address == address)
    async with engine.begin() as conn:
        checkpoints = {
            row.checkpoint for row in (await conn.execute(select(wallet_addresses.c.checkpoint).where(where))).all()
        }
        await conn.execute(update(wallet_addresses).where(where).values(status="syncing", error=None))
    # Copies imported at different times may be at different checkpoints: resume from the
    # oldest (re-storing a page is idempotent).
    checkpoint = None if None in checkpoints or len(checkpoints) != 1 else next(iter(checkpoints))
    pages = stored = 0
    try:
        while pages < max_pages:
            page = await source.fetch([address], checkpoint)
            pages += 1
            async with engine.begin() as conn:
                if page.rewound_to is not None:
                    await store.mark_unconfirmed_above(conn, chain, page.rewound_to)
                stored += await store.upsert_address_txs(conn, page.txs)
                await conn.execute(
                    update(wallet_addresses)
                    .where(where)
                    .values(
                        checkpoint=page.checkpoint,
                        synced_height=_height_of(page.checkpoint),
                        status="synced" if page.done else "syncing",
                        last_synced_at=now(),
                    )
                )
                if page.done:
                    await store.recompute_balance(conn, chain, address)
            checkpoint = page.checkpoint
            if page.done:
                return SyncResult(chain, address, pages, stored, "synced")
        return SyncResult(chain, address, pages, stored, "syncing")
    except (ChainError, InvalidAddress) as exc:
        log.warning("address sync failed", chain=chain, address=address, error=str(exc))
        async with engine.begin() as conn:
            await conn.execute(update(wallet_addresses).where(where).values(status="error", error=str(exc)[:500]))
        return SyncResult(chain, address, pages, stored, "error", str(exc))


def _height_of(checkpoint: str | None) -> int | None:
    """The block height of a node source's ``"<height>:<hash>"`` checkpoint, else ``None``."""
    head, sep, _ = (checkpoint or "").partition(":")
    return int(head) if sep and head.isdigit() else None


async def sync_all(engine: AsyncEngine, source_for: SourceFor) -> list[SyncResult]:
    """Sync every imported address whose chain has a source.

    Args:
        source_for: the source of a chain (``"BTC"``, ``"ETH"``...), ``None`` if none is
            configured (those addresses stay ``pending``).
    """
    async with engine.connect() as conn:
        pairs = (await conn.execute(select(wallet_addresses.c.chain, wallet_addresses.c.address).distinct())).all()
    results = []
    for chain, address in pairs:
        source = source_for(chain)
        if source is not None:
            results.append(await sync_address(engine, source, address))
    return results
