"""Payout rounds: the release gate, then every due payout of every mix sent in one batch.

A round runs every ``payout_round_seconds`` per asset (one round per asset at a time across all
workers: a session advisory lock that dies with a killed worker's connection). It does three
things, each in as few durable transactions as possible:

1. **Gate.** Each pooled deposit whose payouts are not yet released and whose first payout is
   due is measured with the analyzer's :func:`release_set`: how many public
   deposits could have paid its total at this moment. At ``privacy_gate_k`` or more, or once
   the mix's maximum wait is reached, its payouts are released (``sends.released_at``), with
   the set size recorded on the deposit and in the audit log. Until then nothing is signed.
2. **Sign.** The released, due payouts (account chains) are signed and stored in ONE
   transaction, each moving ``scheduled -> signed`` with ``attempts = 1`` (counted before any
   byte leaves) and its audit entry, each in a savepoint so one that cannot be signed does not
   undo the others. On Jobcoin at most one payout per recipient is in flight (the partial unique
   index that keeps the ledger's history unambiguous), so a round takes one per recipient.
3. **Send and record.** The batch is broadcast, then its outcomes are recorded in ONE
   transaction. Anything not certain (timeouts, rejections, a crash anywhere in between) is left
   to the per-send state machine (``mixer/sends.py``), which already never sends twice: a
   ``signed`` send with attempts counted is looked up on the ledger before it is ever sent again.

UTXO chains are released the same way, and their payouts go through the per-send path (each
spends pool coins chosen for it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import Row, func, select, text
from sqlalchemy.exc import IntegrityError

from mixhouse.audit import AuditEntry
from mixhouse.chains.base import ChainAdapter, FeeQuote, PreparedSend, UtxoChainAdapter
from mixhouse.db.tables import deposits, mixes, sends
from mixhouse.errors import BroadcastRejected, IllegalTransition, MixhouseError, SendOutcomeUnknown
from mixhouse.jobs import send_job
from mixhouse.mixer.privacy.records import PublicDeposit
from mixhouse.mixer.privacy.rules import DenominatedRules
from mixhouse.mixer.privacy.score import release_set
from mixhouse.mixer.privacy.timing import TimingRules
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.sends import allocate_nonce, maybe_complete_mix, payouts_paused, prepared_of, send_entry
from mixhouse.mixer.states import DepositState, SendState, now, transition
from mixhouse.money import ASSETS, Asset
from mixhouse.unit import Unit, unit

log = structlog.get_logger(__name__)

# Broadcasts in flight at once on chains without nonces (each is one HTTP request).
_BROADCAST_CONCURRENCY = 16
_RETRY_UNKNOWN_SECONDS = 10.0
_RETRY_REJECTED_SECONDS = 30.0
_CONFIRMATION_CHECK_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one round did.

    Attributes:
        released: deposits whose payouts the gate released.
        held: deposits the gate kept waiting.
        signed: payouts signed in the batch.
        confirmed: payouts recorded as confirmed by this round.
    """

    released: int = 0
    held: int = 0
    signed: int = 0
    confirmed: int = 0


async def run_round(rt: Runtime, asset: Asset) -> RoundResult:
    """Run one payout round of ``asset``: gate, sign, send, record. Returns at once (an empty
    result) if another worker's round of the asset is running.

    Raises:
        ChainError: the node or API failed in a way the per-send path must handle later.
    """
    async with rt.engine.connect() as lock_conn:
        got = (
            await lock_conn.execute(
                text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": f"mixhouse:payout_round:{asset.value}"}
            )
        ).scalar_one()
        await lock_conn.commit()
        if not got:
            return RoundResult()
        try:
            released, held = await release_gate(rt, asset)
            if await payouts_paused(rt, asset.value):
                log.warning("payouts paused by reconciliation; round sends nothing", asset=asset.value)
                return RoundResult(released=released, held=held)
            signed, confirmed = await _send_due(rt, asset)
            return RoundResult(released=released, held=held, signed=signed, confirmed=confirmed)
        finally:
            await lock_conn.execute(
                text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": f"mixhouse:payout_round:{asset.value}"}
            )
            await lock_conn.commit()


async def release_gate(rt: Runtime, asset: Asset) -> tuple[int, int]:
    """Release the payouts of every waiting deposit of ``asset`` whose anonymity set reached
    ``privacy_gate_k``, or whose mix's maximum wait is over.

    Returns:
        ``(released, still_held)`` deposit counts.
    """
    moment = now()
    settings = rt.settings
    async with rt.engine.connect() as conn:
        waiting = (
            await conn.execute(
                select(
                    deposits.c.id,
                    deposits.c.mix_id,
                    deposits.c.payout_total,
                    deposits.c.pooled_at,
                    mixes.c.delay_min_seconds,
                    mixes.c.max_wait_seconds,
                    select(func.max(sends.c.due_at))
                    .where(sends.c.deposit_id == deposits.c.id, sends.c.kind == "payout")
                    .scalar_subquery()
                    .label("last_due_at"),
                )
                .join(mixes, mixes.c.id == deposits.c.mix_id)
                .where(
                    deposits.c.asset == asset.value,
                    deposits.c.state == DepositState.POOLED,
                    deposits.c.released_at.is_(None),
                    select(func.min(sends.c.due_at))
                    .where(sends.c.deposit_id == deposits.c.id, sends.c.kind == "payout")
                    .scalar_subquery()
                    <= moment,
                )
                .order_by(deposits.c.pooled_at)
            )
        ).all()
        if not waiting:
            return 0, 0
        longest = max(w.max_wait_seconds for w in waiting)
        recent = (
            await conn.execute(
                select(deposits.c.id, deposits.c.amount, deposits.c.network_fee_amount, deposits.c.created_at).where(
                    deposits.c.asset == asset.value,
                    deposits.c.state.in_([DepositState.SWEEPING, DepositState.POOLED]),
                    deposits.c.created_at >= moment - timedelta(seconds=longest),
                )
            )
        ).all()
    # The public sees each deposit's amount at its arrival, and the network fees of the sweep and
    # the payouts on chain: the fee rules apply to what is left (on Jobcoin, the whole amount).
    public = [
        PublicDeposit(
            ref=str(r.id),
            address="",
            amount=int(r.amount) - int(r.network_fee_amount or 0),
            at=r.created_at.timestamp(),
        )
        for r in recent
    ]
    dust = ASSETS[asset].dust
    rules = DenominatedRules(settings.fee_min_bps, settings.fee_max_bps, min_payout=dust)
    decisions: list[tuple[Any, int, str]] = []
    held = 0
    for dep in waiting:
        # The attacker will see this mix's payouts from now until its last piece falls due.
        size = release_set(
            int(dep.payout_total),
            first_payout_at=moment.timestamp(),
            last_payout_at=max(moment, dep.last_due_at).timestamp(),
            recent_deposits=public,
            rules=rules,
            timing=TimingRules(dep.delay_min_seconds, dep.max_wait_seconds),
        )
        waited = (moment - dep.pooled_at).total_seconds()
        if size >= settings.privacy_gate_k:
            decisions.append((dep, size, "anonymity set reached"))
        elif waited >= dep.max_wait_seconds:
            decisions.append((dep, size, "maximum wait reached"))
        else:
            held += 1
    if not decisions:
        return 0, held
    utxo = isinstance(rt.adapter(asset), UtxoChainAdapter)
    async with unit(rt.engine) as work:
        for dep, size, reason in decisions:
            await work.conn.execute(
                deposits.update()
                .where(deposits.c.id == dep.id, deposits.c.released_at.is_(None))
                .values(released_at=moment, anonymity_set=size, updated_at=moment)
            )
            payouts = (
                await work.conn.execute(
                    sends.update()
                    .where(sends.c.deposit_id == dep.id, sends.c.kind == "payout", sends.c.released_at.is_(None))
                    .values(released_at=moment)
                    .returning(sends.c.id, sends.c.due_at)
                )
            ).all()
            if utxo:
                for send_id, due_at in payouts:
                    work.defer(send_job(send_id, due_at))
            work.audit(
                AuditEntry(
                    "deposit.released",
                    "deposit",
                    str(dep.id),
                    asset=asset.value,
                    details={"mix_id": dep.mix_id, "anonymity_set": size, "reason": reason, "payouts": len(payouts)},
                )
            )
    return len(decisions), held


async def _send_due(rt: Runtime, asset: Asset) -> tuple[int, int]:
    adapter = rt.adapter(asset)
    if isinstance(adapter, UtxoChainAdapter):
        return 0, 0  # released UTXO payouts have their own jobs (coin selection per payout)
    batch = await _sign_batch(rt, adapter, asset)
    if not batch:
        return 0, 0
    outcomes = await _broadcast_batch(adapter, batch)
    confirmed = await _record_batch(rt, adapter, batch, outcomes)
    return len(batch), confirmed


async def _sign_batch(rt: Runtime, adapter: ChainAdapter, asset: Asset) -> list[Row[Any]]:
    """Sign and store the round's payouts in one transaction; returns the signed rows."""
    signed: list[Row[Any]] = []
    async with unit(rt.engine) as work:
        due = (
            await work.conn.execute(
                select(sends)
                .where(
                    sends.c.asset == asset.value,
                    sends.c.kind == "payout",
                    sends.c.state == SendState.SCHEDULED,
                    sends.c.released_at.is_not(None),
                    sends.c.due_at <= now(),
                )
                .order_by(sends.c.due_at, sends.c.id)
                .limit(rt.settings.payout_batch_size)
                .with_for_update(skip_locked=True)
            )
        ).all()
        busy = await _keys_in_flight(work, asset, {r.serial_key for r in due if r.serial_key is not None})
        for row in due:
            if row.serial_key is not None:
                if row.serial_key in busy:
                    continue  # one send per (pool, recipient) in flight: the next round takes it
                busy.add(row.serial_key)
            one = Unit(work.conn)
            try:
                async with work.conn.begin_nested():
                    signed.append(await _sign_one(one, adapter, row))
            except (MixhouseError, IntegrityError):
                log.exception("payout not signed this round", send_id=row.id)
                continue
            work.entries.extend(one.entries)
    return signed


async def _keys_in_flight(work: Unit, asset: Asset, keys: set[str]) -> set[str]:
    if not keys:
        return set()
    rows = await work.conn.execute(
        select(sends.c.serial_key).where(
            sends.c.asset == asset.value, sends.c.state == SendState.SIGNED, sends.c.serial_key.in_(keys)
        )
    )
    return {r.serial_key for r in rows}


async def _sign_one(work: Unit, adapter: ChainAdapter, row: Row[Any]) -> Row[Any]:
    nonce = await allocate_nonce(work, adapter, row.from_address) if adapter.uses_nonces else None
    prepared = await adapter.prepare_send(
        from_address=row.from_address,
        from_key_index=row.from_key_index,
        to_address=row.to_address,
        amount=row.amount,
        fee=FeeQuote(per_send=row.network_fee_reserved, detail="as planned"),
        nonce=nonce,
    )
    signed = await transition(
        work.conn,
        sends,
        row.id,
        SendState.SCHEDULED,
        SendState.SIGNED,
        raw_tx=prepared.raw_tx,
        txid=prepared.txid,
        nonce=prepared.nonce,
        signed_at=now(),
        attempts=sends.c.attempts + 1,
    )
    work.audit(send_entry("send.signed", signed, batch=True))
    return signed


@dataclass(frozen=True, slots=True)
class _Outcome:
    ok: bool
    error: str | None = None
    retry_in: float = 0.0


async def _broadcast_batch(adapter: ChainAdapter, batch: list[Row[Any]]) -> list[_Outcome]:
    async def one(row: Row[Any]) -> _Outcome:
        prepared: PreparedSend = prepared_of(row)
        try:
            await adapter.broadcast(prepared)
        except SendOutcomeUnknown as exc:
            return _Outcome(False, f"outcome unknown: {exc}", _RETRY_UNKNOWN_SECONDS)
        except BroadcastRejected as exc:
            return _Outcome(False, f"rejected: {exc}", _RETRY_REJECTED_SECONDS)
        return _Outcome(True)

    if adapter.uses_nonces:
        # Nonce order: a node queues a later nonce until the earlier one arrives, but sending in
        # order keeps every transaction immediately minable.
        return [await one(row) for row in batch]
    limit = asyncio.Semaphore(_BROADCAST_CONCURRENCY)

    async def bounded(row: Row[Any]) -> _Outcome:
        async with limit:
            return await one(row)

    return list(await asyncio.gather(*(bounded(r) for r in batch)))


async def _record_batch(rt: Runtime, adapter: ChainAdapter, batch: list[Row[Any]], outcomes: list[_Outcome]) -> int:
    """Record the broadcast outcomes in one transaction. Returns how many are confirmed."""
    confirmed = 0
    moment = now()
    async with unit(rt.engine) as work:
        done_mixes: set[str] = set()
        for row, outcome in zip(batch, outcomes, strict=True):
            if not outcome.ok:
                await work.conn.execute(
                    sends.update().where(sends.c.id == row.id).values(last_error=(outcome.error or "")[:500])
                )
                work.defer(send_job(row.id, moment + timedelta(seconds=outcome.retry_in)))
                continue
            try:
                async with work.conn.begin_nested():
                    if adapter.final_on_broadcast:
                        done = await transition(
                            work.conn,
                            sends,
                            row.id,
                            SendState.SIGNED,
                            SendState.CONFIRMED,
                            broadcast_at=moment,
                            confirmed_at=moment,
                            last_error=None,
                        )
                        work.audit(send_entry("send.confirmed", done, recovered=False, batch=True))
                        done_mixes.add(done.mix_id)
                        confirmed += 1
                    else:
                        sent = await transition(
                            work.conn, sends, row.id, SendState.SIGNED, SendState.BROADCAST, broadcast_at=moment
                        )
                        work.audit(send_entry("send.broadcast", sent, batch=True))
                        work.defer(send_job(row.id, moment + timedelta(seconds=_CONFIRMATION_CHECK_SECONDS)))
            except IllegalTransition:
                continue  # the per-send path recorded it first (a recovery job raced us)
        for mix_id in sorted(done_mixes):  # one lock order across concurrent writers
            await maybe_complete_mix(work, mix_id)
    return confirmed
