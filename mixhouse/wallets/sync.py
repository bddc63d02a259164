"""The sync engine: brings imported addresses up to date from their history source.

Incremental and restartable: each page a source returns is stored together with the new
checkpoint in one transaction, so a process killed mid-sync resumes after the last stored page
and a second sync of an up-to-date address fetches nothing but the tip. Reorgs reported by a
source put the transactions above the rewound height back to unconfirmed before the new page
is stored (those still in the new chain confirm again with it). Statuses: ``pending`` (never
synced), ``syncing``, ``synced``, ``error`` (with the reason; retried at the next run).

Addresses derived from an xpub follow its gap limit: after syncing, :func:`sync_all` derives
the addresses each branch now needs (:func:`mixhouse.wallets.service.extend_gap`) and syncs
them, round after round, until a round derives nothing, so a payment far past the first
``gap_limit`` addresses is found in one run as long as no gap before it exceeds the limit.
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
from mixhouse.wallets import service, store
from mixhouse.wallets.records import HistorySource

log = structlog.get_logger(__name__)

SourceFor = Callable[[str], HistorySource | None]

# Gap-extension rounds per sync_all: each round can reach gap_limit indexes further, so this
# bounds one run (a wallet with more used addresses finishes at the next run).
MAX_GAP_ROUNDS = 50


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


async def sync_all(
    engine: AsyncEngine,
    source_for: SourceFor,
    *,
    bitcoin_network: str | None = None,
    max_gap_rounds: int = MAX_GAP_ROUNDS,
) -> list[SyncResult]:
    """Sync every imported address whose chain has a source, then keep the xpubs' gap limits.

    Args:
        source_for: the source of a chain (``"BTC"``, ``"ETH"``...), ``None`` if none is
            configured (those addresses stay ``pending``).
        bitcoin_network: the server's Bitcoin network. When given and a BTC source exists,
            after the first pass each round derives the addresses the xpubs' gap limits now
            call for and syncs them; it stops when a round derives nothing, or after
            ``max_gap_rounds`` rounds (the next run goes on). ``None`` skips this.

    Returns:
        One :class:`SyncResult` per address synced, in sync order (first pass, then the
        derived addresses of each round).
    """
    async with engine.connect() as conn:
        pairs = (await conn.execute(select(wallet_addresses.c.chain, wallet_addresses.c.address).distinct())).all()
    results = []
    for chain, address in pairs:
        source = source_for(chain)
        if source is not None:
            results.append(await sync_address(engine, source, address))
    bitcoin = source_for("BTC")
    if bitcoin_network is None or bitcoin is None:
        return results
    for _ in range(max_gap_rounds):
        derived = await service.extend_gap(engine, bitcoin_network=bitcoin_network)
        if not derived:
            break
        # An address derived for two wallets (the same xpub imported twice) syncs once.
        results.extend([await sync_address(engine, bitcoin, a) for a in dict.fromkeys(d.address for d in derived)])
    else:
        log.info("gap extension stopped for this run", rounds=max_gap_rounds)
    return results
