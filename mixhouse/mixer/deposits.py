"""Watching deposit addresses: recording deposits, confirming and screening them.

A scan records every transfer to a watched deposit address as a ``seen`` deposit. Once it
has the chain's required confirmations it is screened and, in the same transaction, frozen
(a sanctions match), held (outside the mix's limits), or accepted: moved to ``sweeping`` with
its sweep into the pool scheduled. A deposit that vanishes before it confirms (a reorg) goes
to ``dropped`` and comes back to ``seen`` if it reappears.

Every asset is scanned through the scanning engine (:mod:`mixhouse.watch`: one block reader
per node and one reorg policy with wallet sync): :meth:`Runtime.deposit_scanner`, one
ChainWatch per node kept for the process. Cursors stored by the adapters' own scans before
are converted on first use (:mod:`mixhouse.watch.scans`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import psycopg
import structlog
from sqlalchemy import Row, exists, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from mixhouse.audit import AuditEntry
from mixhouse.chains.base import FeeQuote, Transfer, UtxoChainAdapter, outpoint_of
from mixhouse.db.tables import chain_cursors, deposits, mixes, pool_moves, sends, utxos
from mixhouse.errors import IllegalTransition, MixhouseError
from mixhouse.jobs import send_job
from mixhouse.mixer.planner import fee_bounds, payout_quantum
from mixhouse.mixer.pooling import deposit_coin_row, deposit_send_row, pool_deposit, sweep_amount
from mixhouse.mixer.rounds import batch_sweeps
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.screening import normalize_for_screening
from mixhouse.mixer.states import DEPOSIT_TRANSITIONS, DepositState, now, transition
from mixhouse.money import Asset, asset_info, asset_lock_key
from mixhouse.unit import Unit, unit

log = structlog.get_logger(__name__)


_SCAN_LOCK = 0x7363616E  # "scan"; with the asset's lock key (two-int advisory lock), one lock per asset


async def scan_asset(rt: Runtime, asset: Asset) -> int:
    """Scan the chain of ``asset`` once and advance every ``seen`` deposit.

    One scan per asset runs at a time across all workers: the scan holds a session advisory
    lock, which PostgreSQL releases if the worker dies. A scan that finds the lock taken
    returns 0 at once.

    Returns:
        How many new deposits were recorded.

    Raises:
        ChainError: the node or API failed (the job is retried at the next tick).
    """
    keys = {"c": _SCAN_LOCK, "k": asset_lock_key(asset)}
    async with rt.engine.connect() as lock_conn:
        if not (await lock_conn.execute(text("SELECT pg_try_advisory_lock(:c, :k)"), keys)).scalar_one():
            return 0
        await lock_conn.commit()
        try:
            return await _scan_locked(rt, asset)
        finally:
            await lock_conn.execute(text("SELECT pg_advisory_unlock(:c, :k)"), keys)
            await lock_conn.commit()


async def _scan_locked(rt: Runtime, asset: Asset) -> int:
    adapter = rt.adapter(asset)
    async with rt.engine.connect() as conn:
        mix_by_address = await watched_mixes(conn, asset)
        cursor = (
            await conn.execute(select(chain_cursors.c.cursor).where(chain_cursors.c.asset == asset.value))
        ).scalar_one_or_none()
        since = await oldest_watched_mix(conn, asset) if cursor is None and mix_by_address else None
    utxo_chain = isinstance(adapter, UtxoChainAdapter)
    if not mix_by_address and not utxo_chain:
        return 0
    # UTXO chains: the top-up address of every pool key generation not yet retired (a coin sent to
    # a draining one's is a pool coin of that generation, moved by the drain: mixer/pool_rotation.py).
    pool_chains = adapter.pool_key_chains() if isinstance(adapter, UtxoChainAdapter) else {}
    watched = list(mix_by_address) + list(pool_chains)
    # A too-deep reorg raises ReorgTooDeep / WatcherStopped here: this asset's deposit watching
    # is stopped (audited, alerted) and the scan job fails until the operator resumes it.
    result = await rt.deposit_scanner().scan(adapter, watched, cursor, since=since)
    if utxo_chain:
        await record_pool_topups(rt, asset, [t for t in result.transfers if t.to_address in pool_chains])
        await advance_pool_coins(rt, asset)
    seen_now = {t.ref: t for t in result.transfers}
    new = 0
    async with unit(rt.engine) as work:
        rows = [
            {
                "mix_id": mix_by_address[t.to_address],
                "asset": asset.value,
                "chain_ref": t.ref,
                "deposit_address": t.to_address,
                "from_addresses": list(t.from_addresses),
                "amount": t.amount,
                "state": DepositState.SEEN,
                "confirmations": t.confirmations,
                "block_number": t.block_number,
            }
            for t in result.transfers
            if t.to_address in mix_by_address
        ]
        # An empty VALUES list would insert one row of defaults: only insert when there are rows.
        if rows:
            inserted = (
                await work.conn.execute(
                    insert(deposits)
                    .values(rows)
                    .on_conflict_do_nothing(constraint="uq_deposits_chain_ref")
                    .returning(deposits.c.id, deposits.c.mix_id, deposits.c.amount, deposits.c.chain_ref)
                )
            ).all()
            for row in inserted:
                work.audit(
                    AuditEntry(
                        "deposit.seen",
                        "deposit",
                        str(row.id),
                        asset=asset.value,
                        amount=row.amount,
                        details={"mix_id": row.mix_id, "chain_ref": row.chain_ref},
                    )
                )
            new = len(inserted)
        if result.cursor is not None:
            # The heights go with the cursor they describe (/metrics: mixhouse_scan_lag_blocks).
            position = {"cursor": result.cursor, "tip_height": result.tip, "scanned_height": result.scanned}
            await work.conn.execute(
                insert(chain_cursors)
                .values(asset=asset.value, updated_at=now(), **position)
                .on_conflict_do_update(
                    index_elements=[chain_cursors.c.asset],
                    set_={**position, "updated_at": now()},
                )
            )
    await advance_seen_deposits(rt, asset, seen_now)
    return new


async def watched_mixes(conn: AsyncConnection, asset: Asset) -> dict[str, str]:
    """``{deposit address: mix id}`` of every mix of ``asset`` still watched
    (``watch_until`` in the future), read on ``conn`` without committing.

    Every scan reads them all (100,000 rows at 100,000 watched mixes): through the driver's
    cursor as plain tuples, since building SQLAlchemy rows and reading their attributes took
    more than twice as long as the query itself (benchmarks/scan.py).
    """
    raw = await conn.get_raw_connection()
    driver = cast(psycopg.AsyncConnection[tuple[str, str]], raw.driver_connection)
    async with driver.cursor() as cur:
        await cur.execute(
            "SELECT deposit_address, id FROM mixes WHERE asset = %s AND watch_until > %s", (asset.value, now())
        )
        return dict(await cur.fetchall())


async def oldest_watched_mix(conn: AsyncConnection, asset: Asset) -> datetime | None:
    """The creation time of the oldest still-watched mix of ``asset`` (``None``: none), where a
    first scan with no cursor must start (:mod:`mixhouse.watch.scans`); read on ``conn``."""
    oldest: datetime | None = (
        await conn.execute(
            select(func.min(mixes.c.created_at)).where(mixes.c.asset == asset.value, mixes.c.watch_until > now())
        )
    ).scalar_one()
    return oldest


async def advance_seen_deposits(rt: Runtime, asset: Asset, fresh: dict[str, Transfer]) -> None:
    """Re-check every ``seen`` (and ``dropped``) deposit of ``asset``: confirm, drop or revive it.

    ``fresh`` holds transfers the scan just returned, by ref, to save a lookup.
    """
    adapter = rt.adapter(asset)
    async with rt.engine.connect() as conn:
        pending = (
            await conn.execute(
                select(deposits).where(
                    deposits.c.asset == asset.value,
                    deposits.c.state.in_([DepositState.SEEN, DepositState.DROPPED]),
                )
            )
        ).all()
    if not pending:
        return
    ready: list[tuple[Row[Any], int]] = []
    for dep in pending:
        transfer = fresh.get(dep.chain_ref) or _transfer_of(dep)
        confirmations = (
            transfer.confirmations if dep.chain_ref in fresh else await adapter.transfer_confirmations(transfer)
        )
        if dep.state == DepositState.DROPPED:
            if confirmations is not None:
                async with unit(rt.engine) as work:
                    await transition(work.conn, deposits, dep.id, DepositState.DROPPED, DepositState.SEEN)
                    work.audit(AuditEntry("deposit.reappeared", "deposit", str(dep.id), asset=asset.value))
            continue
        if confirmations is None:
            async with unit(rt.engine) as work:
                await transition(work.conn, deposits, dep.id, DepositState.SEEN, DepositState.DROPPED)
                work.audit(
                    AuditEntry(
                        "deposit.dropped",
                        "deposit",
                        str(dep.id),
                        asset=asset.value,
                        amount=dep.amount,
                        details={"reason": "transfer no longer on chain (reorg)"},
                    )
                )
            continue
        if confirmations < adapter.confirmations_required:
            if confirmations != dep.confirmations:
                async with rt.engine.begin() as conn:
                    await conn.execute(
                        deposits.update().where(deposits.c.id == dep.id).values(confirmations=confirmations)
                    )
            continue
        ready.append((dep, confirmations))
    if ready:
        await confirm_deposits(rt, ready, await adapter.quote_network_fee())


def _transfer_of(dep: Row[Any]) -> Transfer:
    return Transfer(
        to_address=dep.deposit_address,
        from_addresses=tuple(dep.from_addresses),
        amount=dep.amount,
        ref=dep.chain_ref,
        block_number=dep.block_number,
        confirmations=dep.confirmations,
    )


CONFIRM_BATCH = 500


async def confirm_deposits(rt: Runtime, ready: list[tuple[Row[Any], int]], quote: FeeQuote) -> None:
    """Screen confirmed deposits and freeze, hold or accept each, up to :data:`CONFIRM_BATCH`
    per transaction.

    On account chains the clean deposits within their mix's limits (nearly all of them) are
    screened and accepted together: one read of their mixes, one screening query, one UPDATE
    moving them ``seen -> sweeping``, one INSERT of their sweeps, each with its own audit
    entry (and job, where sweeps are not batched). The rest, and all of a batch whose bulk
    step failed, run one by one, each in a savepoint: one that fails (and is retried at the
    next scan) does not undo the others, and its audit entries and jobs are dropped with it.
    """
    for start in range(0, len(ready), CONFIRM_BATCH):
        async with unit(rt.engine) as work:
            chunk = ready[start : start + CONFIRM_BATCH]
            bulk = Unit(work.conn)
            try:
                async with work.conn.begin_nested():
                    rest = await _accept_in_bulk(rt, bulk, chunk, quote)
            except (IllegalTransition, IntegrityError):
                log.warning("bulk acceptance undone; deposits accepted one by one", deposits=len(chunk))
                rest = chunk
            else:
                work.entries.extend(bulk.entries)
                work.pending_jobs.extend(bulk.pending_jobs)
            for dep, confirmations in rest:
                one = Unit(work.conn)
                try:
                    async with work.conn.begin_nested():
                        await _confirm_in(rt, one, dep, confirmations, quote)
                except MixhouseError:
                    log.exception("deposit not confirmed this time", deposit_id=dep.id)
                    continue
                work.entries.extend(one.entries)
                work.pending_jobs.extend(one.pending_jobs)


_ACCEPT_MANY_SQL = text(
    """
    UPDATE deposits d
    SET state = :to_state, confirmations = v.confirmations, network_fee_amount = :network_fee, updated_at = :at
    FROM unnest(CAST(:ids AS bigint[]), CAST(:confirmations AS integer[])) AS v(id, confirmations)
    WHERE d.id = v.id AND d.state = :from_state
    RETURNING d.id
    """
)


async def _accept_in_bulk(
    rt: Runtime, work: Unit, ready: list[tuple[Row[Any], int]], quote: FeeQuote
) -> list[tuple[Row[Any], int]]:
    """Accept, in ``work``'s transaction and in a handful of statements, the deposits of
    ``ready`` that pass screening and their mix's limits on an account chain; returns the
    others (a screening hit, a hold, a UTXO chain) for the one-by-one path, untouched.

    The same checks, state change, sweep row, audit entry and job as :func:`_confirm_in`.

    Raises:
        IllegalTransition: a deposit is no longer ``seen`` (the caller's savepoint undoes it all).
    """
    if (DepositState.SEEN, DepositState.SWEEPING) not in DEPOSIT_TRANSITIONS:  # pragma: no cover
        raise IllegalTransition(f"deposits: {DepositState.SEEN} -> {DepositState.SWEEPING} is not allowed")
    candidates = [(d, c) for d, c in ready if not isinstance(rt.adapter(d.asset), UtxoChainAdapter)]
    if not candidates:
        return ready
    mix_rows = {
        m.id: m for m in await work.conn.execute(select(mixes).where(mixes.c.id.in_({d.mix_id for d, _ in candidates})))
    }
    listed = await _listed_senders(rt, work, [a for d, _ in candidates for a in d.from_addresses])
    accepted: list[tuple[Row[Any], int]] = []
    for dep, confirmations in candidates:
        clean = not any(normalize_for_screening(a) in listed for a in dep.from_addresses)
        if clean and _hold_reason(dep, mix_rows[dep.mix_id], quote, quote.per_send) is None:
            accepted.append((dep, confirmations))
    if not accepted:
        return ready
    moment = now()
    moved = (
        await work.conn.execute(
            _ACCEPT_MANY_SQL,
            {
                "ids": [d.id for d, _ in accepted],
                "confirmations": [c for _, c in accepted],
                "network_fee": quote.per_send,
                "to_state": DepositState.SWEEPING,
                "from_state": DepositState.SEEN,
                "at": moment,
            },
        )
    ).all()
    if len(moved) != len(accepted):
        raise IllegalTransition(f"{len(accepted) - len(moved)} deposits are no longer {DepositState.SEEN!r}")
    rows = []
    for dep, _ in accepted:
        adapter = rt.adapter(dep.asset)
        row = deposit_send_row(
            rt,
            dep,
            mix_rows[dep.mix_id],
            kind="sweep",
            to_address=adapter.pool_address,
            amount=sweep_amount(adapter, dep.amount, quote),
            network_fee=quote.per_send,
        )
        rows.append({**row, "due_at": moment})
    sweep_of = {
        r.deposit_id: r.id
        for r in await work.conn.execute(sends.insert().values(rows).returning(sends.c.id, sends.c.deposit_id))
    }
    for dep, _ in accepted:
        if not batch_sweeps(rt.adapter(dep.asset)):
            work.defer(send_job(sweep_of[dep.id]))
        work.audit(_accepted(dep, sweep_send_id=sweep_of[dep.id]))
    done = {d.id for d, _ in accepted}
    return [(d, c) for d, c in ready if d.id not in done]


async def _listed_senders(rt: Runtime, work: Unit, addresses: list[str]) -> set[str]:
    """The screening forms (:func:`normalize_for_screening`) of those ``addresses`` that are
    on a sanctions list or the denylist: one screening of them all, with the same lists and
    the same comparison a deposit's own screening uses."""
    if not addresses:
        return set()
    verdict = await rt.screener.screen(work.conn, addresses)
    return {normalize_for_screening(address) for address, _ in verdict.hits}


async def confirm_deposit(rt: Runtime, dep: Row[Any], confirmations: int, quote: FeeQuote) -> DepositState:
    """Screen one confirmed deposit and freeze, hold, or accept it, in one transaction.

    Accepting schedules the sweep (deposit address -> pool) and enqueues its job (account
    chains; the sweep's network fee ``quote.per_send`` is taken from the deposit), or pools the
    deposit's output at once (UTXO chains).

    Returns:
        The deposit's new state.
    """
    async with unit(rt.engine) as work:
        return await _confirm_in(rt, work, dep, confirmations, quote)


async def _confirm_in(rt: Runtime, work: Unit, dep: Row[Any], confirmations: int, quote: FeeQuote) -> DepositState:
    adapter = rt.adapter(dep.asset)
    mix = (await work.conn.execute(select(mixes).where(mixes.c.id == dep.mix_id))).one()
    verdict = await rt.screener.screen(work.conn, dep.from_addresses)
    base: dict[str, Any] = {"confirmations": confirmations}
    if not verdict.clear:
        await transition(
            work.conn,
            deposits,
            dep.id,
            DepositState.SEEN,
            DepositState.FROZEN,
            reason=verdict.reason(),
            **base,
        )
        work.audit(
            AuditEntry(
                "deposit.frozen",
                "deposit",
                str(dep.id),
                asset=dep.asset,
                amount=dep.amount,
                details={"mix_id": dep.mix_id, "hits": [list(h) for h in verdict.hits]},
            )
        )
        log.warning("deposit frozen by sanctions screening", deposit_id=dep.id, reason=verdict.reason())
        return DepositState.FROZEN
    sweep_fee = 0 if isinstance(adapter, UtxoChainAdapter) else quote.per_send
    reason = _hold_reason(dep, mix, quote, sweep_fee)
    if reason is not None:
        await transition(work.conn, deposits, dep.id, DepositState.SEEN, DepositState.HELD, reason=reason, **base)
        work.audit(
            AuditEntry(
                "deposit.held",
                "deposit",
                str(dep.id),
                asset=dep.asset,
                amount=dep.amount,
                details={"reason": reason},
            )
        )
        return DepositState.HELD
    if isinstance(adapter, UtxoChainAdapter):
        await _pool_utxo_deposit(rt, work, dep, mix, quote=quote, confirmations=confirmations)
        return DepositState.POOLED
    await transition(
        work.conn,
        deposits,
        dep.id,
        DepositState.SEEN,
        DepositState.SWEEPING,
        network_fee_amount=quote.per_send,
        **base,
    )
    swept = sweep_amount(adapter, dep.amount, quote)
    row = deposit_send_row(
        rt, dep, mix, kind="sweep", to_address=adapter.pool_address, amount=swept, network_fee=quote.per_send
    )
    send_id = (await work.conn.execute(sends.insert().values(row).returning(sends.c.id))).scalar_one()
    if not batch_sweeps(adapter):
        work.defer(send_job(send_id))
    # else the scan's sweep batch (``rounds.run_sweeps``) sends it right after this commit, and
    # the recovery task gives it a job if that never happens (a crash).
    work.audit(_accepted(dep, sweep_send_id=send_id))
    return DepositState.SWEEPING


def _accepted(dep: Row[Any], **details: Any) -> AuditEntry:
    """The audit entry of a deposit that passed screening and joins the pool."""
    return AuditEntry(
        "deposit.accepted",
        "deposit",
        str(dep.id),
        asset=dep.asset,
        amount=dep.amount,
        details={"mix_id": dep.mix_id, "screening": "clear", **details},
    )


def _hold_reason(dep: Row[Any], mix: Row[Any], quote: FeeQuote, sweep_fee: int) -> str | None:
    """Why a clean deposit cannot be mixed as it is, or ``None``."""
    if dep.amount < mix.min_deposit:
        return f"below the mix minimum of {mix.min_deposit} base units"
    if dep.amount > mix.max_deposit:
        return f"above the mix maximum of {mix.max_deposit} base units"
    dust = asset_info(dep.asset).dust
    n = len(mix.withdrawal_addresses)
    after_sweep = dep.amount - sweep_fee
    _, fee = fee_bounds(after_sweep, mix.fee_min_bps, mix.fee_max_bps)
    quantum = payout_quantum(after_sweep, mix.fee_min_bps, mix.fee_max_bps, minimum=dust)
    if after_sweep - fee - n * quote.per_send < n * quantum:
        return "network fees would consume the deposit"
    if dep.created_at > mix.watch_until:  # pragma: no cover - unwatched addresses are not scanned
        return "arrived after the late-deposit grace period"
    return None


async def _pool_utxo_deposit(
    rt: Runtime, work: Unit, dep: Row[Any], mix: Row[Any], *, quote: FeeQuote, confirmations: int
) -> None:
    """UTXO chains: the deposit's output becomes a pool coin owned by its mix (so that mix's
    payouts never spend it) and the deposit is pooled at once."""
    await work.conn.execute(
        insert(utxos).values(deposit_coin_row(dep, mix, state="available")).on_conflict_do_nothing()
    )
    await pool_deposit(
        rt,
        work,
        deposit_id=dep.id,
        from_state=DepositState.SEEN,
        pooled_amount=dep.amount,
        quote=quote,
        extra={"confirmations": confirmations},
    )
    work.audit(_accepted(dep, pool_coin=dep.chain_ref))


async def record_pool_topups(rt: Runtime, asset: Asset, transfers: list[Transfer]) -> int:
    """UTXO chains: outputs paying a pool top-up address (key 0 of a pool key generation not yet
    retired, :meth:`~mixhouse.chains.base.UtxoChainAdapter.pool_key_chains`) become pool coins
    of that generation (operator liquidity, owned by no mix), ``unconfirmed`` until
    :func:`advance_pool_coins` sees them deep. Transfers to other addresses are ignored.

    Returns:
        How many new coins were recorded.
    """
    adapter = rt.adapter(asset)
    chains = adapter.pool_key_chains() if isinstance(adapter, UtxoChainAdapter) else {}
    rows = []
    for t in transfers:
        if t.to_address not in chains:
            continue
        txid, vout = outpoint_of(t.ref)
        rows.append(
            {
                "asset": asset.value,
                "txid": txid,
                "vout": vout,
                "address": t.to_address,
                "key_chain": chains[t.to_address],
                "key_index": 0,
                "amount": t.amount,
                "owner_mix_id": None,
                "state": "unconfirmed",
            }
        )
    if not rows:
        return 0
    async with unit(rt.engine) as work:
        new = (
            await work.conn.execute(
                insert(utxos)
                .values(rows)
                .on_conflict_do_nothing()
                .returning(utxos.c.txid, utxos.c.vout, utxos.c.amount, utxos.c.address)
            )
        ).all()
        for row in new:
            work.audit(
                AuditEntry(
                    "pool.topup_seen",
                    "utxo",
                    f"{row.txid}:{row.vout}",
                    asset=asset.value,
                    amount=row.amount,
                    details={"address": row.address},
                )
            )
    return len(new)


async def advance_pool_coins(rt: Runtime, asset: Asset) -> None:
    """Make operator top-ups spendable once they have the required confirmations; forget
    those a reorg removed. The output of a pool move (key rotation) is the drain's to confirm
    (mixer/pool_rotation.py): it is stored before its transaction is broadcast; the change of a
    payout or of a payout batch is its send's (made ``available`` when that send confirms).
    Taking a batch's change here too let a late batch confirmation turn a change coin another
    batch had already reserved back into ``available``: spent twice, a false deficit, and a
    pool move stuck on a spent input (seen under load by tests/test_key_rotation_bitcoin.py)."""
    adapter = rt.adapter(asset)
    async with rt.engine.connect() as conn:
        pending = (
            await conn.execute(
                select(utxos).where(
                    utxos.c.asset == asset.value,
                    utxos.c.state == "unconfirmed",
                    # A payout's or a batch's change is its own to confirm, with its send.
                    utxos.c.created_by_send.is_(None),
                    utxos.c.created_by_batch.is_(None),
                    ~exists().where(pool_moves.c.asset == utxos.c.asset, pool_moves.c.txid == utxos.c.txid),
                )
            )
        ).all()
    for coin in pending:
        ref = f"{coin.txid}:{coin.vout}"
        confirmations = await adapter.transfer_confirmations(Transfer(coin.address, (), coin.amount, ref, None, 0))
        if confirmations is not None and confirmations < adapter.confirmations_required:
            continue
        async with unit(rt.engine) as work:
            where = (utxos.c.asset == asset.value) & (utxos.c.txid == coin.txid) & (utxos.c.vout == coin.vout)
            if confirmations is None:
                await work.conn.execute(utxos.delete().where(where, utxos.c.state == "unconfirmed"))
                work.audit(AuditEntry("pool.topup_dropped", "utxo", ref, asset=asset.value, amount=coin.amount))
            else:
                await work.conn.execute(
                    utxos.update()
                    .where(where, utxos.c.state == "unconfirmed")
                    .values(state="available", updated_at=now())
                )
                work.audit(AuditEntry("pool.topup_confirmed", "utxo", ref, asset=asset.value, amount=coin.amount))
