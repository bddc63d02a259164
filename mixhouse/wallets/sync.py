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

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.clock import now
from mixhouse.db.tables import wallet_addresses
from mixhouse.errors import ChainError, InvalidAddress
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

    Copies imported at different times may be at different checkpoints: the sync resumes from
    the start then (re-storing a page is idempotent).

    Returns:
        A :class:`SyncResult`; a node or provider failure is recorded as ``error`` status, not
        raised, so one bad address does not stop the others.
    """
    where = (wallet_addresses.c.chain == source.chain) & (wallet_addresses.c.address == address)
    async with engine.connect() as conn:
        checkpoints = {
            row.checkpoint for row in (await conn.execute(select(wallet_addresses.c.checkpoint).where(where))).all()
        }
    checkpoint = None if None in checkpoints or len(checkpoints) != 1 else next(iter(checkpoints))
    [result] = await sync_addresses(engine, source, [address], checkpoint, max_pages=max_pages)
    return result


async def sync_addresses(
    engine: AsyncEngine,
    source: HistorySource,
    addresses: Sequence[str],
    checkpoint: str | None,
    *,
    max_pages: int = 10_000,
) -> list[SyncResult]:
    """Sync ``addresses`` of ``source.chain`` together from ``checkpoint`` to the source's tip.

    One fetch covers all of them, so a node source reads each block once for the whole group
    instead of once per address. Each page is stored with the new checkpoint of every address
    of the group in one transaction. A reorg reported by the source un-confirms the group's
    rows above the rewound height only: another address, synced to a block still in the main
    chain, keeps its confirmed rows (it would never read them again).

    Returns:
        One :class:`SyncResult` per address, in ``addresses`` order; ``pages`` and ``stored``
        are the group's. A node or provider failure is recorded as ``error`` status of every
        address of the group, not raised.
    """
    chain = source.chain
    group = list(dict.fromkeys(addresses))
    where = (wallet_addresses.c.chain == chain) & wallet_addresses.c.address.in_(group)
    async with engine.begin() as conn:
        await conn.execute(update(wallet_addresses).where(where).values(status="syncing", error=None))
    pages = stored = 0
    try:
        while pages < max_pages:
            page = await source.fetch(group, checkpoint)
            pages += 1
            async with engine.begin() as conn:
                if page.rewound_to is not None:
                    await store.mark_unconfirmed_above(conn, chain, page.rewound_to, addresses=group)
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
                    for address in group:
                        await store.recompute_balance(conn, chain, address)
            checkpoint = page.checkpoint
            if page.done:
                return [SyncResult(chain, address, pages, stored, "synced") for address in group]
        return [SyncResult(chain, address, pages, stored, "syncing") for address in group]
    except (ChainError, InvalidAddress) as exc:
        log.warning("address sync failed", chain=chain, addresses=len(group), first=group[0], error=str(exc))
        async with engine.begin() as conn:
            await conn.execute(update(wallet_addresses).where(where).values(status="error", error=str(exc)[:500]))
        return [SyncResult(chain, address, pages, stored, "error", str(exc)) for address in group]


def _fetch_group_size(source: HistorySource) -> int:
    """How many addresses one fetch of ``source`` may cover (its ``max_addresses_per_fetch``).

    Node sources read blocks, so their checkpoints are block positions shared by any set of
    addresses; a provider's checkpoint belongs to the address set it was made for, so
    providers sync one address at a time (the default).
    """
    return max(1, int(getattr(source, "max_addresses_per_fetch", 1)))


async def _sync_grouped(engine: AsyncEngine, source: HistorySource, addresses: Sequence[str]) -> list[SyncResult]:
    """Sync ``addresses`` of ``source.chain``, those at the same checkpoint together."""
    size = _fetch_group_size(source)
    if size == 1:
        return [await sync_address(engine, source, address) for address in addresses]
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(wallet_addresses.c.address, wallet_addresses.c.checkpoint).where(
                    wallet_addresses.c.chain == source.chain, wallet_addresses.c.address.in_(list(addresses))
                )
            )
        ).all()
    checkpoints: dict[str, set[str | None]] = {}
    for row in rows:
        checkpoints.setdefault(row.address, set()).add(row.checkpoint)
    groups: dict[str | None, list[str]] = {}
    for address in addresses:
        known = checkpoints.get(address, {None})
        # Copies imported at different times disagree: start over (storing is idempotent).
        groups.setdefault(next(iter(known)) if len(known) == 1 else None, []).append(address)
    results: list[SyncResult] = []
    for checkpoint, members in groups.items():
        for start in range(0, len(members), size):
            results.extend(await sync_addresses(engine, source, members[start : start + size], checkpoint))
    return results


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
    by_chain: dict[str, list[str]] = {}
    for chain, address in pairs:
        by_chain.setdefault(chain, []).append(address)
    results: list[SyncResult] = []
    for chain, addresses in sorted(by_chain.items()):
        source = source_for(chain)
        if source is not None:
            results.extend(await _sync_grouped(engine, source, sorted(addresses)))
    bitcoin = source_for("BTC")
    if bitcoin_network is None or bitcoin is None:
        return results
    for _ in range(max_gap_rounds):
        derived = await service.extend_gap(engine, bitcoin_network=bitcoin_network)
        if not derived:
            break
        # An address derived for two wallets (the same xpub imported twice) syncs once.
        results.extend(await _sync_grouped(engine, bitcoin, list(dict.fromkeys(d.address for d in derived))))
    else:
        log.info("gap extension stopped for this run", rounds=max_gap_rounds)
    return results
