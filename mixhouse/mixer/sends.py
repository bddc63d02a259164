"""The send state machine: sweeps (deposit -> pool), payouts (pool -> user) and refunds (a held
deposit -> an address the operator gives, :mod:`mixhouse.mixer.refunds`).

``scheduled -> signed -> broadcast -> confirmed``. The rules that keep a send from ever being
paid twice or lost, even if the process dies at any line:

* A send is signed and stored (raw tx, txid, nonce) in the transaction that moves it to
  ``signed``; the nonce is allocated in that same transaction. Nothing leaves before COMMIT.
* ``attempts`` is incremented and committed *before* each broadcast. A send found in
  ``signed`` with ``attempts > 0`` may have left: on chains with an idempotent send (EVM) the
  same bytes are broadcast again; on Jobcoin, which has no txid, the ledger history is searched
  first (see ``has_idempotent_send``) and the send is repeated only if it is certainly absent,
  after a settle time that lets any request still in flight land.
* On Jobcoin at most one send per (from, to) pair is ``signed`` at a time (a partial unique
  index), so the n-th transfer of that pair in the ledger is the n-th send we recorded.
* A timeout is "unknown", never "failed": it is reconciled by the same check, never repeated.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import ColumnElement, Row, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError

from mixhouse.audit import AuditEntry
from mixhouse.chains.base import ChainAdapter, FeeQuote, PoolCoin, PreparedSend, UtxoChainAdapter
from mixhouse.chains.base import SendState as ChainSendState
from mixhouse.chains.evm.token import Erc20Adapter, TokenBlacklisted
from mixhouse.db.tables import account_nonces, deposits, mixes, pool_generations, reconciliations, sends, utxos
from mixhouse.errors import BroadcastRejected, IllegalTransition, InsufficientFunds, SendOutcomeUnknown
from mixhouse.jobs import send_job
from mixhouse.keys.audited import KeyUse, key_use_entries, recording_key_uses
from mixhouse.keys.bip84 import pool_key_chain
from mixhouse.mixer.gas import GAS_KIND, sweep_gas_ready
from mixhouse.mixer.mixes import next_key_index
from mixhouse.mixer.pooling import pool_deposit, pooled_by_sweep
from mixhouse.mixer.refunds import mark_refunded
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.states import MIX_TRANSITIONS, DepositState, MixState, SendState, now, transition
from mixhouse.unit import Unit, unit

log = structlog.get_logger(__name__)

PENDING_RECHECK_SECONDS = 2.0
PAUSED_RECHECK_SECONDS = 15.0
BUSY_RECHECK_SECONDS = 0.5
# UTXO payouts: candidates considered per coin selection, and the fee cap as a multiple of the
# fee reserved from the user (the pool pays any excess over the reserve).
_MAX_CANDIDATE_COINS = 200
_MAX_FEE_MULTIPLE = 10
_MIN_FEE_CAP = 5_000


def prepared_of(row: Row[Any]) -> PreparedSend:
    """The stored :class:`PreparedSend` of a ``sends`` row."""
    return PreparedSend(
        from_address=row.from_address,
        to_address=row.to_address,
        amount=row.amount,
        network_fee_max=row.network_fee_reserved,
        raw_tx=None if row.raw_tx is None else bytes(row.raw_tx),
        txid=row.txid,
        nonce=row.nonce,
    )


async def _load(rt: Runtime, send_id: int) -> Row[Any]:
    async with rt.engine.connect() as conn:
        return (await conn.execute(select(sends).where(sends.c.id == send_id))).one()


def _retry(work: Unit, send_id: int, seconds: float) -> None:
    work.defer(send_job(send_id, now() + timedelta(seconds=seconds)))


async def _retry_later(rt: Runtime, send_id: int, seconds: float) -> None:
    async with unit(rt.engine) as work:
        _retry(work, send_id, seconds)


async def execute_send(rt: Runtime, send_id: int) -> str:
    """Advance send ``send_id`` as far as it can go now; re-enqueue itself where it must wait.

    Safe to run any number of times, concurrently or after a crash: every step is a
    conditional transition, and the job lock ``send:<id>`` keeps two runs apart.

    Returns:
        The send's state when this run stops.
    """
    row = await _load(rt, send_id)
    adapter = rt.adapter(row.asset)
    if row.batch_id is not None and isinstance(adapter, UtxoChainAdapter):
        # An output of a shared transaction: the batch moves as one (imported here, it imports us).
        from mixhouse.mixer.utxo_batches import advance_batch  # noqa: PLC0415

        await advance_batch(rt, adapter, row.batch_id)
        return str((await _load(rt, send_id)).state)
    if row.kind == GAS_KIND:
        # A token sweep's gas top-up advances with its sweep (mixer/gas.py), never on its own.
        return str(row.state)
    just_signed = False
    if row.state == SendState.SCHEDULED:
        try:
            signed = await _sign(rt, adapter, row)
        except TokenBlacklisted as exc:
            await _hold_blacklisted(rt, row, exc)
            return SendState.SCHEDULED
        if signed is None:
            return SendState.SCHEDULED
        row, just_signed = signed, True
    if row.state == SendState.SIGNED and row.kind in ("sweep", "refund") and isinstance(adapter, Erc20Adapter):
        # The deposit address has no ETH: the pool sends the exact gas of its sweep (or of the
        # refund of a held deposit, which leaves from there too) first.
        if not await sweep_gas_ready(rt, adapter, row):
            await _retry_later(rt, row.id, PENDING_RECHECK_SECONDS)
            return SendState.SIGNED
        just_signed = False  # time has passed since signing: count this attempt
    if row.state == SendState.SIGNED:
        after = await _broadcast(rt, adapter, row, just_signed=just_signed)
        if after is None:
            return SendState.SIGNED
        row = after
    if row.state == SendState.BROADCAST:
        return await _await_confirmation(rt, adapter, row)
    return str(row.state)


async def _hold_blacklisted(rt: Runtime, row: Row[Any], exc: TokenBlacklisted) -> None:
    """A token refuses the sender of ``row`` (its blacklist): the send can never succeed, so it
    is not retried. It stays ``scheduled`` with the reason, an operator alert is logged and
    audited (``send.blocked``); the operator decides (a refund, the token's owner).
    """
    log.error("token blacklisted the sender; send held for the operator", send_id=row.id, asset=row.asset)
    async with unit(rt.engine) as work:
        await work.conn.execute(sends.update().where(sends.c.id == row.id).values(last_error=f"blocked: {exc}"[:500]))
        work.audit(send_entry("send.blocked", row, reason="token blacklist"))


async def _sign(rt: Runtime, adapter: ChainAdapter, row: Row[Any]) -> Row[Any] | None:
    if row.kind == "payout" and row.released_at is None:
        # The release gate has not let this payout go: a payout round will, not this job.
        return None
    if row.kind == "payout" and isinstance(adapter, UtxoChainAdapter) and rt.settings.utxo_batch_max_outputs > 1:
        # Released UTXO payouts are the rounds' to sign, several in one transaction
        # (mixer/utxo_batches.py); a job of its own would only take one out of its batch.
        return None
    if row.due_at > now():
        await _retry_later(rt, row.id, (row.due_at - now()).total_seconds())
        return None
    if row.kind == "payout" and await payouts_paused(rt, row.asset):
        log.warning("payouts paused by reconciliation", send_id=row.id, asset=row.asset)
        await _retry_later(rt, row.id, PAUSED_RECHECK_SECONDS)
        return None
    if isinstance(adapter, UtxoChainAdapter) and row.kind == "refund":
        async with unit(rt.engine) as work:
            return await sign_utxo_refund(work, adapter, row)
    if isinstance(adapter, UtxoChainAdapter):
        return await sign_utxo_payout(rt, adapter, row)
    try:
        async with unit(rt.engine) as work:
            return await sign_account_send(work, adapter, row)
    except IntegrityError:
        # Another send of the same (from, to) pair is in flight on a chain without txids:
        # wait for it, so the ledger history stays unambiguous.
        await _retry_later(rt, row.id, BUSY_RECHECK_SECONDS)
        return None


async def sign_account_send(work: Unit, adapter: ChainAdapter, row: Row[Any], **audit_details: Any) -> Row[Any]:
    """Sign a scheduled send of an account chain and store it (raw tx, txid, nonce), moving it
    ``scheduled -> signed`` with its attempt counted, in ``work``'s transaction; the nonce comes
    from the row-locked counter in the same transaction. Used by the per-send path and by the
    payout rounds' batches.

    Raises:
        IllegalTransition: the send is no longer ``scheduled``.
        IntegrityError: another send of the same (from, to) pair is in flight (Jobcoin).
    """
    nonce = await allocate_nonce(work, adapter, row.from_address) if adapter.uses_nonces else None
    with recording_key_uses() as uses:
        prepared = await adapter.prepare_send(
            from_address=row.from_address,
            from_key_index=row.from_key_index,
            to_address=row.to_address,
            amount=row.amount,
            fee=FeeQuote(per_send=row.network_fee_reserved, detail="as planned"),
            nonce=nonce,
        )
    return await _store_signed(work, row, prepared, key_uses=uses, **audit_details)


async def _store_signed(
    work: Unit, row: Row[Any], prepared: PreparedSend, *, key_uses: list[KeyUse], **audit_details: Any
) -> Row[Any]:
    """``scheduled -> signed`` with ``prepared``'s raw tx, txid and nonce stored and the attempt
    counted, audited (``send.signed`` with ``audit_details``, and a ``key.used`` entry per key
    that signed it), in ``work``.

    Raises:
        IllegalTransition: the send is no longer ``scheduled``.
    """
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
    work.audit(send_entry("send.signed", signed, **audit_details))
    _audit_key_uses(work, signed, key_uses)
    return signed


def _audit_key_uses(work: Unit, row: Row[Any], uses: list[KeyUse]) -> None:
    """A ``key.used`` audit entry per key that signed send ``row`` (issue 12), in ``work``."""
    for entry in key_use_entries(uses, entity_type="send", entity_id=str(row.id), purpose=row.kind, asset=row.asset):
        work.audit(entry)


async def pool_chains(work: Unit, asset: str) -> tuple[int, tuple[int, ...]]:
    """The stored ``key_chain`` new change of ``asset`` goes to (the active pool key generation's,
    ``2g + 1``) and those of the draining generations (their coins are left to the drain, so
    it ends), read in ``work`` under a share lock on the generations (mixer/pool_rotation.py):
    a rotation waits for a send that read the old generation to commit, and every send after
    it reads the new one. ``(1, ())`` for an asset that never rotated.
    """
    rows = (
        await work.conn.execute(
            select(pool_generations.c.generation, pool_generations.c.state)
            .where(pool_generations.c.asset == asset, pool_generations.c.state != "retired")
            .with_for_update(read=True)
        )
    ).all()
    active = [int(r.generation) for r in rows if r.state == "active"]
    draining = tuple(pool_key_chain(int(r.generation)) for r in rows if r.state == "draining")
    return (pool_key_chain(active[0]) if active else 1), draining


async def sign_utxo_payout(rt: Runtime, adapter: UtxoChainAdapter, row: Row[Any]) -> Row[Any] | None:
    """Pay one UTXO payout with a transaction of its own: choose pool coins (never the paying
    mix's own deposit), sign, and store the transaction with its inputs reserved and its change
    recorded, in one unit. Used by per-send jobs when batching is off, and by the rounds for a
    payout their batch could not take.

    Returns:
        The signed row, or ``None`` if the pool cannot pay it now (recorded, retried later).

    Raises:
        IllegalTransition: not a payout, or no longer ``scheduled``.
        ChainError: the node failed.
    """
    if row.kind != "payout":
        # Deposits on UTXO chains join the pool as coins; nothing else may spend pool coins.
        raise IllegalTransition(f"send {row.id}: a UTXO chain has no {row.kind} sends")
    fee_rate = await adapter.fee_rate()
    try:
        async with unit(rt.engine) as work:
            change_chain, draining = await pool_chains(work, row.asset)
            coin_rows = (
                await work.conn.execute(
                    select(utxos)
                    .where(
                        utxos.c.asset == row.asset,
                        utxos.c.state == "available",
                        utxos.c.owner_mix_id.is_distinct_from(row.mix_id),
                        utxos.c.key_chain.not_in(draining),
                    )
                    .order_by(utxos.c.amount.desc())
                    .limit(_MAX_CANDIDATE_COINS)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            change_index = await next_key_index(work, f"{row.asset}:change")
            with recording_key_uses() as uses:
                spend = await adapter.prepare_utxo_send(
                    coins=[coin_of(c) for c in coin_rows],
                    exclude_owner=row.mix_id,
                    payments=[(row.to_address, row.amount)],
                    change_index=change_index,
                    fee_rate=fee_rate,
                    max_fee=max(row.network_fee_reserved * _MAX_FEE_MULTIPLE, _MIN_FEE_CAP),
                    rng_seed=row.id,
                    change_chain=change_chain,
                )
            for coin in spend.inputs:
                await work.conn.execute(
                    utxos.update()
                    .where(_outpoint(row.asset, coin.txid, coin.vout), utxos.c.state == "available")
                    .values(state="reserved", reserved_by_send=row.id, updated_at=now())
                )
            if spend.change_vout is not None:
                await work.conn.execute(
                    utxos.insert().values(
                        asset=row.asset,
                        txid=spend.prepared.txid,
                        vout=spend.change_vout,
                        address=spend.change_address or adapter.change_address(change_index),
                        key_chain=spend.change_chain,
                        key_index=change_index,
                        amount=spend.change_amount,
                        owner_mix_id=None,
                        state="unconfirmed",
                        created_by_send=row.id,
                    )
                )
            signed = await transition(
                work.conn,
                sends,
                row.id,
                SendState.SCHEDULED,
                SendState.SIGNED,
                raw_tx=spend.prepared.raw_tx,
                txid=spend.prepared.txid,
                signed_at=now(),
                attempts=sends.c.attempts + 1,
            )
            work.audit(
                send_entry(
                    "send.signed",
                    signed,
                    inputs=[f"{c.txid}:{c.vout}" for c in spend.inputs],
                    change=str(spend.change_amount),
                    miner_fee=str(spend.fee),
                    fee_rate=fee_rate,
                )
            )
            _audit_key_uses(work, signed, uses)
            return signed
    except InsufficientFunds as exc:
        # The pool holds no coins but this mix's own: wait for other deposits or a top-up
        # rather than spend the mix's own deposit (which would link it to its payouts).
        log.warning("pool has no eligible coins for a payout yet", send_id=row.id, error=str(exc))
        await _record_error(rt, row.id, f"waiting for pool coins: {exc}", retry_in=PAUSED_RECHECK_SECONDS)
        return None


async def sign_utxo_refund(work: Unit, adapter: UtxoChainAdapter, row: Row[Any]) -> Row[Any]:
    """Sign a scheduled refund of a UTXO chain and store it, moving it ``scheduled -> signed``
    with its attempt counted, in ``work``: the held deposit's own output (reserved by this
    refund when it was scheduled, mixer/refunds.py) spent whole, one output of ``row.amount``,
    no change, the rest to miners.

    Raises:
        IllegalTransition: the send is no longer ``scheduled``.
        NoResultFound: the refund has no reserved coin (a data error).
    """
    coin = (await work.conn.execute(select(utxos).where(utxos.c.reserved_by_send == row.id))).one()
    with recording_key_uses() as uses:
        prepared = await adapter.prepare_single_spend(coin=coin_of(coin), to_address=row.to_address, amount=row.amount)
    # A single spend has no nonce (prepared.nonce is None, as the row's already is).
    return await _store_signed(
        work,
        row,
        prepared,
        key_uses=uses,
        inputs=[f"{coin.txid}:{coin.vout}"],
        miner_fee=str(int(coin.amount) - row.amount),
    )


def coin_of(row: Row[Any]) -> PoolCoin:
    """The :class:`PoolCoin` of a ``utxos`` row."""
    return PoolCoin(
        txid=row.txid,
        vout=row.vout,
        amount=row.amount,
        address=row.address,
        key_chain=row.key_chain,
        key_index=row.key_index,
        owner=row.owner_mix_id,
    )


def _outpoint(asset: str, txid: str, vout: int) -> ColumnElement[bool]:
    return (utxos.c.asset == asset) & (utxos.c.txid == txid) & (utxos.c.vout == vout)


async def _replan_if_inputs_spent(rt: Runtime, adapter: UtxoChainAdapter, row: Row[Any]) -> bool:
    """If the node proves this send can never confirm (an input spent by another transaction,
    ours absent), release its coins and schedule it again. Returns True if re-planned."""
    async with rt.engine.connect() as conn:
        inputs = (await conn.execute(select(utxos).where(utxos.c.reserved_by_send == row.id))).all()
    coins = [coin_of(c) for c in inputs]
    if not await adapter.is_spent_elsewhere(prepared_of(row), coins):
        return False
    still_unspent = {(c.txid, c.vout) for c in coins if await adapter.unspent_amount(c.txid, c.vout) is not None}
    async with unit(rt.engine) as work:
        await transition(
            work.conn, sends, row.id, row.state, SendState.SCHEDULED, raw_tx=None, txid=None, signed_at=None
        )
        for coin in coins:
            await work.conn.execute(
                utxos.update()
                .where(_outpoint(row.asset, coin.txid, coin.vout))
                .values(
                    state="available" if (coin.txid, coin.vout) in still_unspent else "spent",
                    reserved_by_send=None,
                    updated_at=now(),
                )
            )
        await work.conn.execute(utxos.delete().where(utxos.c.created_by_send == row.id))
        work.audit(send_entry("send.replanned", row, reason="an input was spent by another transaction"))
        _retry(work, row.id, 0)
    log.warning("payout inputs spent elsewhere; re-planned", send_id=row.id, txid=row.txid)
    return True


async def allocate_nonce(work: Unit, adapter: ChainAdapter, address: str) -> int | None:
    """Next nonce of ``address`` from the DB counter (seeded from the chain the first time).

    Row-locked for the rest of the transaction, so two sends never share a nonce, and rolled
    back with it, so a crash before COMMIT leaves no gap.
    """
    existing = (
        await work.conn.execute(
            select(account_nonces.c.next_nonce)
            .where(account_nonces.c.asset == adapter.asset.value, account_nonces.c.address == address)
            .with_for_update()
        )
    ).scalar_one_or_none()
    if existing is None:
        chain_nonce = await adapter.next_nonce(address)
        if chain_nonce is None:
            return None
        await work.conn.execute(
            insert(account_nonces)
            .values(asset=adapter.asset.value, address=address, next_nonce=chain_nonce)
            .on_conflict_do_nothing()
        )
        existing = (
            await work.conn.execute(
                select(account_nonces.c.next_nonce)
                .where(account_nonces.c.asset == adapter.asset.value, account_nonces.c.address == address)
                .with_for_update()
            )
        ).scalar_one()
    await work.conn.execute(
        account_nonces.update()
        .where(account_nonces.c.asset == adapter.asset.value, account_nonces.c.address == address)
        .values(next_nonce=existing + 1)
    )
    return int(existing)


async def _landed_before(rt: Runtime, row: Row[Any]) -> int:
    """How many earlier sends of the same pair we recorded as landed (Jobcoin's history index)."""
    async with rt.engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    select(func.count())
                    .select_from(sends)
                    .where(
                        sends.c.asset == row.asset,
                        sends.c.from_address == row.from_address,
                        sends.c.to_address == row.to_address,
                        sends.c.state.in_([SendState.BROADCAST, SendState.CONFIRMED]),
                        sends.c.id != row.id,
                    )
                )
            ).scalar_one()
        )


async def _broadcast(rt: Runtime, adapter: ChainAdapter, row: Row[Any], *, just_signed: bool) -> Row[Any] | None:
    """Broadcast a signed send. The attempt is counted (committed) before the send leaves: by
    the signing unit when ``just_signed``, else here. A send found ``signed`` with attempts
    counted may have left, so on chains without idempotent sends the ledger is asked first."""
    prepared = prepared_of(row)
    if just_signed:
        return await _send_now(rt, adapter, row, prepared)
    if row.attempts > 0 and not adapter.has_idempotent_send:
        # A previous attempt may have landed. Let any request still in flight settle, then
        # look for it in the ledger before sending again.
        settle = rt.settings.jobcoin_send_settle_seconds
        last_try = row.updated_at
        if (now() - last_try).total_seconds() < settle:
            await _retry_later(rt, row.id, settle)
            return None
        check = await adapter.check_send(prepared, earlier_sends=await _landed_before(rt, row))
        if check.state is ChainSendState.CONFIRMED:
            return await _mark_confirmed(rt, row, SendState.SIGNED, check.network_fee_paid, found_by_recovery=True)
    async with rt.engine.begin() as conn:
        await conn.execute(
            sends.update().where(sends.c.id == row.id).values(attempts=sends.c.attempts + 1, updated_at=now())
        )
    return await _send_now(rt, adapter, row, prepared)


async def _send_now(rt: Runtime, adapter: ChainAdapter, row: Row[Any], prepared: PreparedSend) -> Row[Any] | None:
    try:
        await adapter.broadcast(prepared)
    except SendOutcomeUnknown as exc:
        log.warning("send outcome unknown; will reconcile", send_id=row.id, error=str(exc))
        await _record_error(rt, row.id, f"outcome unknown: {exc}", retry_in=rt.settings.jobcoin_send_settle_seconds)
        return None
    except BroadcastRejected as exc:
        # A refund is never re-planned: its only input is the held deposit's, and putting that
        # coin back as `available` would hand it to the pool.
        if (
            isinstance(adapter, UtxoChainAdapter)
            and row.kind != "refund"
            and await _replan_if_inputs_spent(rt, adapter, row)
        ):
            return None
        log.exception("send rejected by the chain", send_id=row.id)
        await _record_error(rt, row.id, f"rejected: {exc}", retry_in=30.0)
        return None
    if adapter.final_on_broadcast:
        # Accepted means committed on this chain: no lookup, which on Jobcoin would download
        # the pool's whole (ever growing) history for every send.
        return await _mark_confirmed(rt, row, SendState.SIGNED, 0, found_by_recovery=False)
    async with unit(rt.engine) as work:
        broadcast = await transition(
            work.conn,
            sends,
            row.id,
            SendState.SIGNED,
            SendState.BROADCAST,
            broadcast_at=now(),
            last_error=None,
        )
        work.audit(send_entry("send.broadcast", broadcast))
        return broadcast


async def _record_error(rt: Runtime, send_id: int, message: str, *, retry_in: float) -> None:
    async with unit(rt.engine) as work:
        await work.conn.execute(sends.update().where(sends.c.id == send_id).values(last_error=message[:500]))
        _retry(work, send_id, retry_in)


async def _await_confirmation(rt: Runtime, adapter: ChainAdapter, row: Row[Any]) -> str:
    # Only a chain without txids needs the history index; the others look the txid up.
    earlier = 0 if adapter.has_idempotent_send else await _landed_before(rt, row)
    check = await adapter.check_send(prepared_of(row), earlier_sends=earlier)
    if check.state is ChainSendState.CONFIRMED:
        await _mark_confirmed(rt, row, SendState.BROADCAST, check.network_fee_paid, found_by_recovery=False)
        return SendState.CONFIRMED
    if check.state is ChainSendState.NOT_FOUND and adapter.has_idempotent_send:
        # Dropped from the mempool: rebroadcast the very same signed bytes.
        async with unit(rt.engine) as work:
            again = await transition(work.conn, sends, row.id, SendState.BROADCAST, SendState.SIGNED)
            work.audit(send_entry("send.dropped", again))
            _retry(work, row.id, 0)
        return SendState.SIGNED
    if check.state is ChainSendState.FAILED:
        log.error("send reverted on chain; operator attention needed", send_id=row.id, txid=row.txid)
        await _record_error(rt, row.id, "reverted on chain", retry_in=300.0)
        return SendState.BROADCAST
    await _retry_later(rt, row.id, PENDING_RECHECK_SECONDS)
    return SendState.BROADCAST


async def _mark_confirmed(
    rt: Runtime, row: Row[Any], from_state: SendState, fee_paid: int | None, *, found_by_recovery: bool
) -> Row[Any]:
    quote: FeeQuote | None = None
    if row.kind == "sweep":
        # Quote the payouts' network fee before the transaction: no network I/O inside it.
        quote = await rt.adapter(row.asset).quote_network_fee()
    async with unit(rt.engine) as work:
        done = await transition(
            work.conn,
            sends,
            row.id,
            from_state,
            SendState.CONFIRMED,
            confirmed_at=now(),
            network_fee_paid=fee_paid,
            last_error=None,
        )
        work.audit(send_entry("send.confirmed", done, recovered=found_by_recovery))
        if isinstance(rt.adapter(row.asset), UtxoChainAdapter):
            await _settle_coins(work, done)
        if quote is not None:
            await pool_deposit(
                rt,
                work,
                deposit_id=done.deposit_id,
                from_state=DepositState.SWEEPING,
                pooled_amount=pooled_by_sweep(rt.adapter(row.asset), done.amount, done.network_fee_reserved),
                quote=quote,
            )
        else:
            if done.kind == "refund":
                await mark_refunded(work, done)
            await maybe_complete_mix(work, done.mix_id)
        return done


async def _settle_coins(work: Unit, send: Row[Any]) -> None:
    """UTXO chains: the inputs of a confirmed send are spent and its change is spendable."""
    spent = (
        await work.conn.execute(
            utxos.update()
            .where(utxos.c.reserved_by_send == send.id)
            .values(state="spent", updated_at=now())
            .returning(utxos.c.amount)
        )
    ).all()
    if not spent:
        return
    change = (
        await work.conn.execute(
            utxos.update()
            .where(utxos.c.created_by_send == send.id)
            .values(state="available", updated_at=now())
            .returning(utxos.c.amount)
        )
    ).all()
    if send.network_fee_paid is None:
        fee = sum(r.amount for r in spent) - send.amount - sum(r.amount for r in change)
        await work.conn.execute(sends.update().where(sends.c.id == send.id).values(network_fee_paid=fee))


async def maybe_complete_mix(work: Unit, mix_id: str) -> None:
    """Complete the mix if every send is confirmed and no deposit is still on its way.

    The mix row is locked *before* counting: two payouts of one mix confirmed in concurrent
    transactions would otherwise each see the other as still open, and neither would complete
    the mix. With the lock, the second waits, and its count (a fresh READ COMMITTED snapshot)
    sees the first one's commit.
    """
    mix = (await work.conn.execute(select(mixes.c.state).where(mixes.c.id == mix_id).with_for_update())).one()
    if mix.state != MixState.MIXING:
        return
    open_sends = (
        await work.conn.execute(
            select(func.count())
            .select_from(sends)
            .where(sends.c.mix_id == mix_id, sends.c.state != SendState.CONFIRMED)
        )
    ).scalar_one()
    open_deposits = (
        await work.conn.execute(
            select(func.count())
            .select_from(deposits)
            .where(deposits.c.mix_id == mix_id, deposits.c.state.in_([DepositState.SEEN, DepositState.SWEEPING]))
        )
    ).scalar_one()
    if open_sends == 0 and open_deposits == 0:
        await transition(work.conn, mixes, mix_id, MixState.MIXING, MixState.COMPLETED)
        work.audit(AuditEntry("mix.completed", "mix", mix_id))


async def complete_mixes(work: Unit, mix_ids: set[str]) -> None:
    """:func:`maybe_complete_mix` for many mixes in three statements: lock the mixing ones
    (in id order, one lock order across writers), find those with a send or deposit still
    open (a fresh READ COMMITTED snapshot, taken after the locks), complete the others."""
    if not mix_ids:
        return
    mixing = [
        r.id
        for r in await work.conn.execute(
            select(mixes.c.id)
            .where(mixes.c.id.in_(sorted(mix_ids)), mixes.c.state == MixState.MIXING)
            .order_by(mixes.c.id)
            .with_for_update()
        )
    ]
    if not mixing:
        return
    open_sends = select(sends.c.mix_id).where(sends.c.mix_id.in_(mixing), sends.c.state != SendState.CONFIRMED)
    open_deposits = select(deposits.c.mix_id).where(
        deposits.c.mix_id.in_(mixing), deposits.c.state.in_([DepositState.SEEN, DepositState.SWEEPING])
    )
    busy = {r.mix_id for r in await work.conn.execute(open_sends.union(open_deposits))}
    done = [m for m in mixing if m not in busy]
    if not done:
        return
    if (MixState.MIXING, MixState.COMPLETED) not in MIX_TRANSITIONS:  # pragma: no cover - a data error
        raise IllegalTransition("mixes: mixing -> completed is not allowed")
    completed = await work.conn.execute(
        mixes.update()
        .where(mixes.c.id.in_(done), mixes.c.state == MixState.MIXING)
        .values(state=MixState.COMPLETED, updated_at=now())
        .returning(mixes.c.id)
    )
    for (mix_id,) in sorted(completed.all()):
        work.audit(AuditEntry("mix.completed", "mix", mix_id))


async def payouts_paused(rt: Runtime, asset: str) -> bool:
    """True when the last reconciliation of ``asset`` found a mismatch that no operator
    acknowledgement covers (:mod:`mixhouse.mixer.acknowledgements`)."""
    async with rt.engine.connect() as conn:
        row = (
            await conn.execute(
                select(reconciliations.c.ok, reconciliations.c.acknowledgement_id).where(
                    reconciliations.c.asset == asset
                )
            )
        ).first()
    return row is not None and row.ok is False and row.acknowledgement_id is None


def send_entry(action: str, row: Row[Any], **extra: Any) -> AuditEntry:
    details: dict[str, Any] = {
        "kind": row.kind,
        "mix_id": row.mix_id,
        "deposit_id": row.deposit_id,
        "from": row.from_address,
        "to": row.to_address,
        "txid": row.txid,
        "nonce": row.nonce,
    }
    if row.network_fee_paid is not None:
        details["network_fee_paid"] = str(row.network_fee_paid)
    details.update(extra)
    return AuditEntry(action, "send", str(row.id), asset=row.asset, amount=row.amount, details=details)
