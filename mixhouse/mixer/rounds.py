"""Payout rounds: the release gate, then every due payout of every mix sent in one batch.

A round runs every ``payout_round_seconds`` per asset, and right after a scan's sweeps pool
deposits (``mixhouse.app.worker``), one round per asset at a time across all workers (a session
advisory lock that dies with a killed worker's connection). It does three
things, each in as few durable transactions as possible:

1. **Gate** (``mixer/gate.py``). Each pooled deposit whose payouts are not yet released and
   whose first payout is due is measured with the analyzer's release set: how many public
   deposits could have paid its total at this moment, for each total it may have. At
   ``privacy_gate_k`` or more, or once the mix's maximum wait is reached, its payouts are
   released (``sends.released_at``), re-planned first if the gate picked another total, with
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

UTXO chains are released the same way; their due payouts are paid by batches, the payouts of
several mixes in one transaction (``mixer/utxo_batches.py``), or with
``utxo_batch_max_outputs = 1`` by the per-send path (each spends pool coins chosen for it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import structlog
from sqlalchemy import Row, Text, any_, cast, func, or_, select, text, true
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.exc import IntegrityError

from mixhouse.chains.base import ChainAdapter, FeeQuote, PreparedSend, UtxoChainAdapter
from mixhouse.chains.evm.token import TokenBlacklisted
from mixhouse.db.tables import sends
from mixhouse.errors import BroadcastRejected, ChainError, IllegalTransition, MixhouseError, SendOutcomeUnknown
from mixhouse.jobs import send_job
from mixhouse.mixer.gate import release_gate
from mixhouse.mixer.pooling import pool_deposit, pool_deposits
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.sends import complete_mixes, payouts_paused, prepared_of, send_entry, sign_account_send
from mixhouse.mixer.states import SEND_TRANSITIONS, DepositState, SendState, now, transition
from mixhouse.mixer.utxo_batches import batching_on, run_utxo_batches
from mixhouse.money import Asset
from mixhouse.unit import Unit, unit

log = structlog.get_logger(__name__)

# Broadcasts in flight at once on chains without nonces (each is one HTTP request).
_BROADCAST_CONCURRENCY = 16
_RETRY_UNKNOWN_SECONDS = 10.0
_RETRY_REJECTED_SECONDS = 30.0
_CONFIRMATION_CHECK_SECONDS = 2.0
# Sign/broadcast/record waves per round or sweep batch (each wave takes one send per pair).
_MAX_WAVES = 20
# How often a round waiting for another's advisory lock tries it again, seconds.
_ROUND_LOCK_POLL_SECONDS = 0.02


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


async def run_round(rt: Runtime, asset: Asset, *, lock_wait_seconds: float = 0.0) -> RoundResult:
    """Run one payout round of ``asset``: gate, sign, send, record. Returns (an empty result)
    if another worker's round of the asset is running and still is after ``lock_wait_seconds``:
    a round run because deposits just joined the pool waits for one begun before they did
    (which may not have seen them) rather than leave them to the next tick.

    Raises:
        ChainError: the node or API failed in a way the per-send path must handle later.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + lock_wait_seconds
    async with rt.engine.connect() as lock_conn:
        while True:
            got = (
                await lock_conn.execute(
                    text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": f"mixhouse:payout_round:{asset.value}"}
                )
            ).scalar_one()
            await lock_conn.commit()
            if got:
                break
            if loop.time() >= give_up:
                return RoundResult()
            await asyncio.sleep(_ROUND_LOCK_POLL_SECONDS)
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


async def _send_due(rt: Runtime, asset: Asset) -> tuple[int, int]:
    adapter = rt.adapter(asset)
    if isinstance(adapter, UtxoChainAdapter):
        if not batching_on(rt):
            return 0, 0  # released UTXO payouts have their own jobs (coin selection per payout)
        # Several mixes' payouts in one transaction each (mixer/utxo_batches.py).
        done = await run_utxo_batches(rt, adapter, asset)
        return done.signed, done.confirmed
    signed = confirmed = 0
    # Waves: a recipient with several pieces gets one per wave (one send per pair in flight),
    # so a round sends them all, one after another, instead of one per round.
    for _ in range(_MAX_WAVES):
        batch = await _sign_batch(rt, adapter, asset, kind="payout")
        if not batch:
            break
        outcomes = await _broadcast_batch(adapter, batch)
        confirmed += await _record_batch(rt, adapter, batch, outcomes)
        signed += len(batch)
        if not all(o.ok for o in outcomes) or not adapter.final_on_broadcast:
            break  # what is not final or not certain waits for its own job, not the next wave
    return signed, confirmed


async def run_sweeps(rt: Runtime, asset: Asset) -> int:
    """Sweep every accepted deposit of ``asset`` into the pool in batches: one transaction signs
    many sweeps (each ``scheduled -> signed`` with its attempt counted, in a savepoint), they are
    broadcast concurrently, and one transaction records them and pools their deposits (payouts
    planned and scheduled). Only on chains where an accepted send is final and has no nonce
    (Jobcoin); elsewhere sweeps keep their per-send jobs. One sweep batch per asset runs at a
    time across workers (a session advisory lock).

    Anything not certain (a timeout, a rejection, a crash anywhere) is left to the per-send state
    machine, which looks a ``signed`` sweep up on the ledger before it is ever sent again; the
    recovery task gives such a sweep a job once it has been idle for a while.

    Returns:
        How many sweeps were confirmed.
    """
    adapter = rt.adapter(asset)
    if not batch_sweeps(adapter):
        return 0
    key = f"mixhouse:sweeps:{asset.value}"
    async with rt.engine.connect() as lock_conn:
        got = (await lock_conn.execute(text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": key})).scalar_one()
        await lock_conn.commit()
        if not got:
            return 0
        try:
            confirmed = 0
            for _ in range(_MAX_WAVES):
                batch = await _sign_batch(rt, adapter, asset, kind="sweep")
                if not batch:
                    break
                outcomes = await _broadcast_batch(adapter, batch)
                confirmed += await _record_sweeps(rt, batch, outcomes)
                if not all(o.ok for o in outcomes):
                    break
            return confirmed
        finally:
            await lock_conn.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": key})
            await lock_conn.commit()


def batch_sweeps(adapter: ChainAdapter) -> bool:
    """Whether ``adapter``'s sweeps go through :func:`run_sweeps` rather than per-send jobs."""
    return adapter.final_on_broadcast and not adapter.uses_nonces and not isinstance(adapter, UtxoChainAdapter)


class _NotAllPooled(Exception):
    """A deposit of the batch could not be pooled: the bulk recording is undone."""


async def _confirm_and_pool(
    rt: Runtime, work: Unit, landed: list[int], quote: FeeQuote, moment: datetime
) -> list[Row[Any]]:
    """Confirm the landed sweeps and pool their deposits, in bulk; returns the sweeps confirmed
    (one recorded first by the per-send path is left out).

    Raises:
        _NotAllPooled: a deposit's payouts could not be planned (the caller's savepoint undoes it all).
    """
    done = await _transition_many(
        work,
        landed,
        SendState.SIGNED,
        SendState.CONFIRMED,
        broadcast_at=moment,
        confirmed_at=moment,
        network_fee_paid=0,
        last_error=None,
    )
    pooled = await pool_deposits(
        rt, work, [(d.deposit_id, d.amount) for d in done], from_state=DepositState.SWEEPING, quote=quote
    )
    if len(pooled) != len(done):
        raise _NotAllPooled
    for d in done:
        work.audit(send_entry("send.confirmed", d, recovered=False, batch=True))
    return done


async def _record_sweeps(rt: Runtime, batch: list[Row[Any]], outcomes: list[_Outcome]) -> int:
    """Record the sweeps' outcomes and pool their deposits, in one transaction."""
    if not batch:
        return 0
    # Quoted before the transaction: no network I/O inside it.
    quote = await rt.adapter(batch[0].asset).quote_network_fee()
    confirmed = 0
    moment = now()
    async with unit(rt.engine) as work:
        pairs = sorted(zip(batch, outcomes, strict=True), key=lambda pair: (pair[0].mix_id, pair[0].id))
        landed = [row.id for row, outcome in pairs if outcome.ok]
        if landed:
            bulk = Unit(work.conn)
            try:
                async with work.conn.begin_nested():
                    swept = await _confirm_and_pool(rt, bulk, landed, quote, moment)
            except (_NotAllPooled, IllegalTransition):
                pass  # undone: one by one below, where a deposit that cannot be pooled waits alone
            else:
                work.entries.extend(bulk.entries)
                pairs = [(row, outcome) for row, outcome in pairs if not outcome.ok]
                confirmed += len(swept)
        # Mix order: pooling locks each deposit's mix row, one lock order across writers.
        for row, outcome in pairs:
            if not outcome.ok:
                await work.conn.execute(
                    sends.update().where(sends.c.id == row.id).values(last_error=(outcome.error or "")[:500])
                )
                work.defer(send_job(row.id, moment + timedelta(seconds=outcome.retry_in)))
                continue
            one = Unit(work.conn)
            try:
                async with work.conn.begin_nested():
                    done = await transition(
                        work.conn,
                        sends,
                        row.id,
                        SendState.SIGNED,
                        SendState.CONFIRMED,
                        broadcast_at=moment,
                        confirmed_at=moment,
                        network_fee_paid=0,
                        last_error=None,
                    )
                    one.audit(send_entry("send.confirmed", done, recovered=False, batch=True))
                    await pool_deposit(
                        rt,
                        one,
                        deposit_id=done.deposit_id,
                        from_state=DepositState.SWEEPING,
                        pooled_amount=done.amount,
                        quote=quote,
                    )
            except IllegalTransition:
                continue  # the per-send path recorded it first (a recovery job raced us)
            except MixhouseError:
                # It landed but cannot be pooled now: its own job retries the recording.
                log.exception("sweep landed but its deposit was not pooled", send_id=row.id)
                work.defer(send_job(row.id, moment + timedelta(seconds=_RETRY_REJECTED_SECONDS)))
                continue
            work.entries.extend(one.entries)
            work.pending_jobs.extend(one.pending_jobs)
            confirmed += 1
    return confirmed


async def _sign_batch(rt: Runtime, adapter: ChainAdapter, asset: Asset, *, kind: str) -> list[Row[Any]]:
    """Sign and store due sends of ``kind`` (released payouts, or sweeps) in one transaction;
    returns the signed rows. At most one send per in-flight key (``serial_key``) is taken."""
    moment = now()
    where = [
        sends.c.asset == asset.value,
        sends.c.kind == kind,
        sends.c.state == SendState.SCHEDULED,
        # Sweeps are not gated; payouts leave once the gate released them.
        sends.c.released_at.is_not(None) if kind == "payout" else true(),
        sends.c.due_at <= moment,
        # Held for the operator: the token blacklists the sender (mixer/sends.py _hold_blacklisted).
        or_(sends.c.last_error.is_(None), sends.c.last_error.not_like("blocked:%")),
    ]
    # The first due send of each key: a batch of the first N due rows would hold several pieces
    # for one recipient, all but one of which must wait, and fill the batch with them.
    key = func.coalesce(sends.c.serial_key, cast(sends.c.id, Text))
    first_of_key = (
        select(sends.c.id, sends.c.due_at)
        .where(*where)
        .ext(distinct_on(key))
        .order_by(key, sends.c.due_at, sends.c.id)
        .subquery()
    )
    # The batch's candidates, at most a batch of them, as ``= ANY(ARRAY(subquery))``:
    # PostgreSQL runs the subquery once (an init plan). As an ``IN (subquery)`` the planner,
    # misled by the statistics of a table a burst just filled (one row estimated, thousands
    # there), re-ran it for every candidate row: 7 s for a batch of 500 out of 1,700 due
    # payouts. Limited here, the array stays small: matched against every due row, an array of
    # all 3,000 keys' first pieces took 0.3 s a wave at 8,000 due payouts.
    batch_size = rt.settings.payout_batch_size
    first_ids = any_(
        func.array(
            select(first_of_key.c.id)
            .order_by(first_of_key.c.due_at, first_of_key.c.id)
            .limit(batch_size)
            .scalar_subquery()
        )
    )
    signed: list[Row[Any]] = []
    async with unit(rt.engine) as work:
        due = (
            await work.conn.execute(
                select(sends)
                .where(*where, sends.c.id == first_ids)
                .order_by(sends.c.due_at, sends.c.id)
                .limit(batch_size)
                .with_for_update(skip_locked=True)
            )
        ).all()
        busy = await _keys_in_flight(work, asset, {r.serial_key for r in due if r.serial_key is not None})
        ready: list[Row[Any]] = []
        for row in due:
            if row.serial_key is not None:
                if row.serial_key in busy:
                    continue  # one send per (pool, recipient) in flight: the next wave takes it
                busy.add(row.serial_key)
            ready.append(row)
        if _bulk(adapter):
            bulk = await _sign_bulk(work, adapter, ready)
            if bulk is not None:
                return bulk
        for row in ready:
            one = Unit(work.conn)
            try:
                async with work.conn.begin_nested():
                    signed.append(await sign_account_send(one, adapter, row, batch=True))
            except TokenBlacklisted as exc:
                # The token refuses the pool: no payout of it can succeed; reported once, held.
                log.exception(
                    "token blacklisted the pool; payout held for the operator", send_id=row.id, asset=row.asset
                )
                await work.conn.execute(
                    sends.update().where(sends.c.id == row.id).values(last_error=f"blocked: {exc}"[:500])
                )
                work.audit(send_entry("send.blocked", row, reason="token blacklist"))
                continue
            except (MixhouseError, IntegrityError):
                log.exception("send not signed in this batch", send_id=row.id, kind=kind)
                continue
            work.entries.extend(one.entries)
    return signed


def _bulk(adapter: ChainAdapter) -> bool:
    """Whether sends of ``adapter`` are signed and recorded with one statement per batch: a
    chain with nothing to sign (no raw transaction, txid or nonce) whose accepted sends are
    final (Jobcoin)."""
    return adapter.final_on_broadcast and not adapter.uses_nonces and not isinstance(adapter, UtxoChainAdapter)


async def _sign_bulk(work: Unit, adapter: ChainAdapter, ready: list[Row[Any]]) -> list[Row[Any]] | None:
    """``scheduled -> signed`` for all of ``ready`` in one statement (attempts counted), with
    their audit entries; ``None`` (nothing changed) if a send in flight elsewhere took one of
    their keys meanwhile, for the per-send savepoints to sort out."""
    ids = []
    for row in ready:
        try:
            prepared = await adapter.prepare_send(
                from_address=row.from_address,
                from_key_index=row.from_key_index,
                to_address=row.to_address,
                amount=row.amount,
                fee=FeeQuote(per_send=row.network_fee_reserved, detail="as planned"),
                nonce=None,
            )
        except MixhouseError:
            log.exception("send not signed in this batch", send_id=row.id)
            continue
        if (prepared.raw_tx, prepared.txid, prepared.nonce) != (None, None, None):
            return None  # something to store per send: the per-send path stores it
        ids.append(row.id)
    if not ids:
        return []
    try:
        async with work.conn.begin_nested():
            signed = await _transition_many(
                work, ids, SendState.SCHEDULED, SendState.SIGNED, signed_at=now(), attempts=sends.c.attempts + 1
            )
    except IntegrityError:
        return None
    for row in signed:
        work.audit(send_entry("send.signed", row, batch=True))
    return signed


async def _transition_many(
    work: Unit, ids: list[int], from_state: SendState, to_state: SendState, **values: Any
) -> list[Row[Any]]:
    """Move the sends ``ids`` that are still in ``from_state`` to ``to_state`` in one statement;
    returns the rows that moved (one already moved by another path is left out)."""
    if (from_state, to_state) not in SEND_TRANSITIONS:
        raise IllegalTransition(f"sends: {from_state} -> {to_state} is not allowed")
    values.setdefault("updated_at", now())
    result = await work.conn.execute(
        sends.update()
        .where(sends.c.id.in_(ids), sends.c.state == from_state)
        .values(state=to_state, **values)
        .returning(*sends.c)
    )
    return sorted(result.all(), key=lambda r: r.id)


async def _keys_in_flight(work: Unit, asset: Asset, keys: set[str]) -> set[str]:
    if not keys:
        return set()
    rows = await work.conn.execute(
        select(sends.c.serial_key).where(
            sends.c.asset == asset.value, sends.c.state == SendState.SIGNED, sends.c.serial_key.in_(keys)
        )
    )
    return {r.serial_key for r in rows}


@dataclass(frozen=True, slots=True)
class _Outcome:
    ok: bool
    error: str | None = None
    retry_in: float = 0.0


@runtime_checkable
class BatchBroadcaster(Protocol):
    """An adapter that sends many prepared sends in few requests (the Jobcoin adapter)."""

    async def broadcast_many(self, batch: Sequence[PreparedSend]) -> list[ChainError | None]:
        """Per send, ``None`` if it landed, else the error a single broadcast would raise."""
        ...


def _outcome_of(error: ChainError | None) -> _Outcome:
    if error is None:
        return _Outcome(True)
    if isinstance(error, BroadcastRejected):
        return _Outcome(False, f"rejected: {error}", _RETRY_REJECTED_SECONDS)
    if isinstance(error, SendOutcomeUnknown):
        return _Outcome(False, f"outcome unknown: {error}", _RETRY_UNKNOWN_SECONDS)
    # Nothing was sent; its attempt is counted, so the per-send path still looks first.
    return _Outcome(False, f"not sent: {error}", _RETRY_UNKNOWN_SECONDS)


async def _broadcast_batch(adapter: ChainAdapter, batch: list[Row[Any]]) -> list[_Outcome]:
    if isinstance(adapter, BatchBroadcaster) and not adapter.uses_nonces:
        return [_outcome_of(e) for e in await adapter.broadcast_many([prepared_of(r) for r in batch])]

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
        pairs = list(zip(batch, outcomes, strict=True))
        if _bulk(adapter):
            # Final on broadcast: every send that went through is confirmed by one statement.
            landed = [row.id for row, outcome in pairs if outcome.ok]
            pairs = [(row, outcome) for row, outcome in pairs if not outcome.ok]
            if landed:
                done_rows = await _transition_many(
                    work,
                    landed,
                    SendState.SIGNED,
                    SendState.CONFIRMED,
                    broadcast_at=moment,
                    confirmed_at=moment,
                    last_error=None,
                )
                # One left out was recorded first by the per-send path (a recovery job).
                for done in done_rows:
                    work.audit(send_entry("send.confirmed", done, recovered=False, batch=True))
                    done_mixes.add(done.mix_id)
                confirmed += len(done_rows)
        for row, outcome in pairs:
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
        await complete_mixes(work, done_mixes)
    return confirmed
