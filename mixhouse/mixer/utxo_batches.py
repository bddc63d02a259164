"""UTXO payout batches: the released payouts of several mixes in ONE transaction.

The custodial form of CoinJoin-style batching (issue 13, part 5). Each payout round of a UTXO
chain (Bitcoin) takes the released, due payouts, one per recipient address and at most
``utxo_batch_max_outputs`` (:func:`mixhouse.mixer.batch_plan.choose_batch`), and pays them with
one transaction: each output exactly the payout's amount in base units (satoshi), the change
to a fresh pool key, the outputs in random order (a fresh secret seed per batch: neither
BIP-69 order nor any order that tells which output is change or which mix it pays), coins
selected for the whole batch from pool coins that are no deposit of any mix of the batch.
The miner fee is split over the payouts by output size (``split_fee``) and recorded as each
payout's ``network_fee_paid`` when the batch confirms.

Exactly once, even under SIGKILL at any line:

* **Sign.** ONE database transaction stores the batch (raw bytes, txid, fee and its shares),
  reserves its inputs, records its change coin, and moves every payout ``scheduled ->
  signed`` (``batch_id``, ``txid``, the attempt counted) with one audit entry per payout.
  Nothing is broadcast before COMMIT; a crash before it leaves nothing behind.
* **Broadcast** sends the stored bytes; it is repeated freely (a Bitcoin transaction has one
  txid and spends fixed outpoints: a second broadcast cannot pay twice). Then ONE
  transaction moves the batch's payouts to ``broadcast``.
* **Confirm.** ONE transaction marks every payout of the batch ``confirmed`` with its fee
  share and audit entry, the inputs spent, the change spendable, and completes the mixes.
* **Re-plan.** If the node proves the batch can never confirm (absent from chain and mempool,
  an input spent by another transaction: a reorg or a conflict), ONE transaction retires the
  batch (``replanned``), frees the inputs still unspent, deletes its change coin and schedules
  its payouts again; the next round pays them in a new batch. A batch that may still confirm
  is never re-planned, so no payout is paid twice.

Every step locks the batch row (``FOR UPDATE``) and checks its state, so the round and any
per-send job of one of its payouts (recovery after a crash, :func:`advance_batch` from
:func:`mixhouse.mixer.sends.execute_send`) cannot both act on it.

Privacy: payouts are 1-2-5 pieces, so an output that is not a piece is recognisably the change
(it cannot be hidden by position, and no amount trick hides it without a second change
output). What the batch hides is which output belongs to which mix: equal pieces of several
mixes leave in one transaction, in random order.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Row, func, select

from mixhouse.chains.base import PreparedSend, UtxoChainAdapter
from mixhouse.chains.base import SendState as ChainSendState
from mixhouse.db.tables import payout_batches, sends, utxos
from mixhouse.errors import BroadcastRejected, IllegalTransition, InsufficientFunds, InvalidAmount, SendOutcomeUnknown
from mixhouse.keys.audited import key_use_entries, recording_key_uses
from mixhouse.mixer.batch_plan import BatchCandidate, batch_fee_cap, choose_batch, split_fee
from mixhouse.mixer.mixes import next_key_index
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.sends import coin_of, complete_mixes, execute_send, pool_chains, send_entry, sign_utxo_payout
from mixhouse.mixer.states import SEND_TRANSITIONS, SendState, now
from mixhouse.money import Asset, asset_info
from mixhouse.unit import Unit, unit

log = structlog.get_logger(__name__)

# Candidate coins per batch, and the fee cap as a multiple of the fees reserved from the users
# (the pool pays any excess over the reserves), as on the per-send path.
_MAX_CANDIDATE_COINS = 200
_MAX_FEE_MULTIPLE = 10
_MIN_FEE_CAP = 5_000
# Open batches looked at per round.
_MAX_OPEN_BATCHES = 100
# Batches signed per round at most (each wave takes one piece per recipient).
_MAX_WAVES = 20

OPEN, CONFIRMED, REPLANNED = "open", "confirmed", "replanned"


@dataclass(frozen=True, slots=True)
class BatchRound:
    """What :func:`run_utxo_batches` did.

    Attributes:
        batches: batches signed.
        signed: payouts signed (in batches, or alone where the batch path could not take them).
        confirmed: payouts recorded as confirmed.
    """

    batches: int = 0
    signed: int = 0
    confirmed: int = 0


def batching_on(rt: Runtime) -> bool:
    """Whether released UTXO payouts are signed by the rounds' batches (else per-send jobs)."""
    return rt.settings.utxo_batch_max_outputs > 1


async def run_utxo_batches(rt: Runtime, adapter: UtxoChainAdapter, asset: Asset) -> BatchRound:
    """Advance every open batch of ``asset``, then sign and broadcast new batches of its
    released, due payouts (waves until nothing is left that can be paid now).

    Payouts the batch path cannot take (below dust) go through the per-send path (one
    transaction each, with its own job).

    Raises:
        ChainError: the node failed (what was stored stays for the next round or job).
    """
    confirmed = 0
    for batch_id in await _open_batches(rt, asset):
        if await advance_batch(rt, adapter, batch_id) == CONFIRMED:
            confirmed += await _payouts_of(rt, batch_id)
    batches = signed = 0
    for _ in range(_MAX_WAVES):
        plan = await sign_batch(rt, adapter, asset)
        signed += plan.alone
        if plan.batch_id is None:
            break
        batches += 1
        signed += plan.payouts
        if await advance_batch(rt, adapter, plan.batch_id) == CONFIRMED:
            confirmed += plan.payouts
    return BatchRound(batches=batches, signed=signed, confirmed=confirmed)


async def _open_batches(rt: Runtime, asset: Asset) -> list[int]:
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(payout_batches.c.id)
            .where(payout_batches.c.asset == asset.value, payout_batches.c.state == OPEN)
            .order_by(payout_batches.c.id)
            .limit(_MAX_OPEN_BATCHES)
        )
        return [r.id for r in rows]


async def _payouts_of(rt: Runtime, batch_id: int) -> int:
    async with rt.engine.connect() as conn:
        return int(
            (await conn.execute(select(payout_batches.c.payouts).where(payout_batches.c.id == batch_id))).scalar_one()
        )


@dataclass(frozen=True, slots=True)
class _Signed:
    batch_id: int | None = None
    payouts: int = 0
    alone: int = 0  # signed by the per-send path instead


class _NoBatch(Exception):
    """The batch cannot be paid now (its eligible coins do not cover it, or the fee is over the
    cap): the signing transaction is rolled back."""

    def __init__(self, candidates: Sequence[BatchCandidate], reason: str) -> None:
        super().__init__(reason)
        self.candidates = tuple(candidates)


async def sign_batch(rt: Runtime, adapter: UtxoChainAdapter, asset: Asset) -> _Signed:
    """Sign one batch of ``asset``'s released, due payouts and store it, in ONE transaction
    (see the module docstring). If the pool's coins that are no member's deposit cannot pay the
    batch, the earliest-due half of its mixes is tried, and so on down to one mix. Returns the
    batch id (``None`` if nothing was batched) and how many payouts below dust the per-send
    path signed instead.

    Raises:
        ChainError: the node failed while quoting the fee rate.
    """
    fee_rate = await adapter.fee_rate()  # before the transaction: no network I/O inside it
    only: frozenset[str] | None = None
    while True:
        try:
            async with unit(rt.engine) as work:
                batch_id, payouts, unbatchable = await _sign_batch_in(work, rt, adapter, asset, fee_rate, only=only)
        except _NoBatch as exc:
            members = list(dict.fromkeys(c.mix_id for c in exc.candidates))  # due order
            if len(members) < 2:
                # One mix alone: the per-send path would exclude the same coins. Wait for coins.
                log.info("pool cannot pay the due payouts yet", asset=asset.value, reason=str(exc))
                return _Signed()
            # Every member's deposit is excluded, and that may be what is missing: half the
            # mixes (the earliest due) may spend the other half's deposits. The rest wait.
            only = frozenset(members[: len(members) // 2])
            continue
        alone = await _sign_alone(rt, adapter, unbatchable)
        return _Signed(batch_id=batch_id, payouts=payouts, alone=alone)


async def _sign_alone(rt: Runtime, adapter: UtxoChainAdapter, candidates: Sequence[BatchCandidate]) -> int:
    """The per-send path for payouts the batch did not take: sign (one transaction each) and
    broadcast; their own jobs follow them to confirmation."""
    signed = 0
    for candidate in candidates:
        async with rt.engine.connect() as conn:
            row = (await conn.execute(select(sends).where(sends.c.id == candidate.send_id))).one()
        if row.state != SendState.SCHEDULED:
            continue
        if await sign_utxo_payout(rt, adapter, row) is not None:
            signed += 1
            await execute_send(rt, row.id)  # broadcast now; it re-enqueues itself to confirm
    return signed


async def _sign_batch_in(
    work: Unit, rt: Runtime, adapter: UtxoChainAdapter, asset: Asset, fee_rate: int, *, only: frozenset[str] | None
) -> tuple[int | None, int, tuple[BatchCandidate, ...]]:
    moment = now()
    due = (
        await work.conn.execute(
            select(sends)
            .where(
                sends.c.asset == asset.value,
                sends.c.kind == "payout",
                sends.c.state == SendState.SCHEDULED,
                sends.c.released_at.is_not(None),
                sends.c.due_at <= moment,
            )
            .order_by(sends.c.due_at, sends.c.id)
            .limit(rt.settings.payout_batch_size)
            .with_for_update(skip_locked=True)
        )
    ).all()
    choice = choose_batch(
        [
            BatchCandidate(r.id, r.mix_id, r.to_address, int(r.amount), int(r.network_fee_reserved))
            for r in due
            if only is None or r.mix_id in only
        ],
        max_outputs=rt.settings.utxo_batch_max_outputs,
        dust=asset_info(asset).dust,
    )
    if not choice.taken:
        return None, 0, choice.unbatchable
    excluded = sorted(choice.mix_ids)
    change_chain, draining = await pool_chains(work, asset.value)
    coin_rows = (
        await work.conn.execute(
            select(utxos)
            .where(
                utxos.c.asset == asset.value,
                utxos.c.state == "available",
                # No input is the deposit of a mix this batch pays (it would link them).
                (utxos.c.owner_mix_id.is_(None)) | (utxos.c.owner_mix_id.not_in(excluded)),
                # A draining pool key generation's coins are the drain's (mixer/pool_rotation.py).
                utxos.c.key_chain.not_in(draining),
            )
            .order_by(utxos.c.amount.desc())
            .limit(_MAX_CANDIDATE_COINS)
            .with_for_update(skip_locked=True)
        )
    ).all()
    change_index = await next_key_index(work, f"{asset.value}:change")
    try:
        with recording_key_uses() as uses:
            spend = await adapter.prepare_utxo_send(
                coins=[coin_of(c) for c in coin_rows],
                exclude_owner=None,
                payments=[(c.to_address, c.amount) for c in choice.taken],
                change_index=change_index,
                fee_rate=fee_rate,
                max_fee=batch_fee_cap(
                    [c.fee_reserved for c in choice.taken], multiple=_MAX_FEE_MULTIPLE, floor=_MIN_FEE_CAP
                ),
                # Output order and tie-breaks from a secret: nothing about the order is predictable.
                rng_seed=secrets.randbits(63),
                change_chain=change_chain,
            )
    except (InsufficientFunds, InvalidAmount) as exc:
        raise _NoBatch(choice.taken, str(exc)) from exc
    weights = list(spend.payment_vbytes) or [1] * len(choice.taken)
    shares = dict(zip((c.send_id for c in choice.taken), split_fee(spend.fee, weights), strict=True))
    txid = spend.prepared.txid
    if spend.prepared.raw_tx is None or txid is None:  # pragma: no cover - a UTXO adapter always signs
        raise IllegalTransition("a UTXO batch needs signed bytes and a txid")
    batch_id = int(
        (
            await work.conn.execute(
                payout_batches.insert()
                .values(
                    asset=asset.value,
                    state=OPEN,
                    txid=txid,
                    raw_tx=spend.prepared.raw_tx,
                    payouts=len(choice.taken),
                    fee=spend.fee,
                    fee_shares={str(k): str(v) for k, v in shares.items()},
                    change_amount=spend.change_amount,
                    vsize=spend.vsize,
                )
                .returning(payout_batches.c.id)
            )
        ).scalar_one()
    )
    for coin in spend.inputs:
        reserved = await work.conn.execute(
            utxos.update()
            .where(
                utxos.c.asset == asset.value,
                utxos.c.txid == coin.txid,
                utxos.c.vout == coin.vout,
                utxos.c.state == "available",
            )
            .values(state="reserved", reserved_by_batch=batch_id, updated_at=moment)
        )
        if reserved.rowcount != 1:  # pragma: no cover - the coin rows are locked above
            raise IllegalTransition(f"coin {coin.txid}:{coin.vout} is no longer available")
    if spend.change_vout is not None:
        await work.conn.execute(
            utxos.insert().values(
                asset=asset.value,
                txid=txid,
                vout=spend.change_vout,
                address=spend.change_address or adapter.change_address(change_index),
                key_chain=spend.change_chain,
                key_index=change_index,
                amount=spend.change_amount,
                owner_mix_id=None,
                state="unconfirmed",
                created_by_batch=batch_id,
            )
        )
    _check(SendState.SCHEDULED, SendState.SIGNED)
    signed = (
        await work.conn.execute(
            sends.update()
            .where(sends.c.id.in_([c.send_id for c in choice.taken]), sends.c.state == SendState.SCHEDULED)
            .values(
                state=SendState.SIGNED,
                batch_id=batch_id,
                txid=txid,
                raw_tx=None,  # the bytes live once, in the batch
                signed_at=moment,
                attempts=sends.c.attempts + 1,
                last_error=None,
                updated_at=moment,
            )
            .returning(*sends.c)
        )
    ).all()
    if len(signed) != len(choice.taken):  # pragma: no cover - the rows are locked above
        raise IllegalTransition("a payout of the batch is no longer scheduled")
    inputs = [f"{c.txid}:{c.vout}" for c in spend.inputs]
    for row in sorted(signed, key=lambda r: r.id):
        work.audit(
            send_entry(
                "send.signed",
                row,
                batch_id=batch_id,
                batch_payouts=len(signed),
                inputs=inputs,
                change=str(spend.change_amount),
                miner_fee=str(spend.fee),
                fee_share=str(shares[row.id]),
                fee_rate=fee_rate,
            )
        )
    # The keys that signed the batch's one transaction: one entry each, on the batch.
    for entry in key_use_entries(
        uses, entity_type="payout_batch", entity_id=str(batch_id), purpose="payout", asset=asset.value
    ):
        work.audit(entry)
    return batch_id, len(signed), choice.unbatchable


def _check(from_state: SendState, to_state: SendState) -> None:
    if (from_state, to_state) not in SEND_TRANSITIONS:  # pragma: no cover - a data error
        raise IllegalTransition(f"sends: {from_state} -> {to_state} is not allowed")


async def _load(rt: Runtime, batch_id: int) -> tuple[Row[Any], Sequence[Row[Any]]]:
    async with rt.engine.connect() as conn:
        batch = (await conn.execute(select(payout_batches).where(payout_batches.c.id == batch_id))).one()
        members = (await conn.execute(select(sends).where(sends.c.batch_id == batch_id).order_by(sends.c.id))).all()
    return batch, members


def prepared_of_batch(batch: Row[Any], pool_address: str) -> PreparedSend:
    """The stored transaction of ``batch`` as a :class:`PreparedSend` (amount: every output
    but the change is not known here, so the batch's own fee stands in as ``network_fee_max``)."""
    return PreparedSend(
        from_address=pool_address,
        to_address=pool_address,
        amount=0,
        network_fee_max=int(batch.fee),
        raw_tx=bytes(batch.raw_tx),
        txid=batch.txid,
        nonce=None,
    )


async def advance_batch(rt: Runtime, adapter: UtxoChainAdapter, batch_id: int) -> str:
    """Take batch ``batch_id`` as far as it can go now: broadcast it (again) if a payout of it is
    still ``signed``, confirm it, or re-plan it if it can never confirm. Safe to run any number
    of times, concurrently or after a crash.

    Returns:
        The batch's state when this run stops (``open``, ``confirmed`` or ``replanned``).

    Raises:
        ChainError: the node failed (nothing recorded; the next round or job retries).
    """
    batch, members = await _load(rt, batch_id)
    if batch.state != OPEN:
        return str(batch.state)
    prepared = prepared_of_batch(batch, adapter.pool_address)
    if any(m.state == SendState.SIGNED for m in members):
        try:
            await adapter.broadcast(prepared)
        except SendOutcomeUnknown as exc:
            log.warning("batch broadcast outcome unknown; will check", batch_id=batch_id, error=str(exc))
            await _touch(rt, batch_id, f"outcome unknown: {exc}")
            return OPEN
        except BroadcastRejected as exc:
            if await _replan_if_inputs_spent(rt, adapter, batch_id, prepared):
                return REPLANNED
            log.warning("batch rejected by the node", batch_id=batch_id, error=str(exc))
            await _touch(rt, batch_id, f"rejected: {exc}")
            return OPEN
        await _mark_broadcast(rt, batch_id)
        # A node may accept asynchronously (bcoin): the next round or job looks it up.
        return OPEN
    check = await adapter.check_send(prepared, earlier_sends=0)
    if check.state is ChainSendState.CONFIRMED:
        await _confirm(rt, batch_id, check.network_fee_paid)
        return CONFIRMED
    if check.state is ChainSendState.NOT_FOUND:
        # Dropped (or not yet accepted): re-planned if it can never confirm, else broadcast again.
        if await _replan_if_inputs_spent(rt, adapter, batch_id, prepared):
            return REPLANNED
        await _mark_dropped(rt, batch_id)
        return OPEN
    await _touch(rt, batch_id, None)
    return OPEN


async def _lock_open(work: Unit, batch_id: int) -> Row[Any] | None:
    """Lock the batch row; ``None`` if it is no longer open (another run moved it)."""
    batch = (
        await work.conn.execute(select(payout_batches).where(payout_batches.c.id == batch_id).with_for_update())
    ).one()
    return batch if batch.state == OPEN else None


async def _touch(rt: Runtime, batch_id: int, error: str | None) -> None:
    """Mark the batch's payouts as looked after (the recovery task gives jobs only to sends idle
    for a while: one batch needs no job per payout), with the last error if any."""
    values: dict[str, Any] = {"updated_at": now()}
    if error is not None:
        values["last_error"] = error[:500]
    async with rt.engine.begin() as conn:
        await conn.execute(
            sends.update()
            .where(sends.c.batch_id == batch_id, sends.c.state.in_([SendState.SIGNED, SendState.BROADCAST]))
            .values(**values)
        )


async def _mark_broadcast(rt: Runtime, batch_id: int) -> None:
    _check(SendState.SIGNED, SendState.BROADCAST)
    moment = now()
    async with unit(rt.engine) as work:
        if await _lock_open(work, batch_id) is None:
            return
        moved = (
            await work.conn.execute(
                sends.update()
                .where(sends.c.batch_id == batch_id, sends.c.state == SendState.SIGNED)
                .values(state=SendState.BROADCAST, broadcast_at=moment, last_error=None, updated_at=moment)
                .returning(*sends.c)
            )
        ).all()
        await work.conn.execute(
            payout_batches.update()
            .where(payout_batches.c.id == batch_id)
            .values(broadcast_at=func.coalesce(payout_batches.c.broadcast_at, moment), updated_at=moment)
        )
        for row in sorted(moved, key=lambda r: r.id):
            work.audit(send_entry("send.broadcast", row, batch_id=batch_id))


async def _mark_dropped(rt: Runtime, batch_id: int) -> None:
    """``broadcast -> signed`` for every payout of a batch the node does not know: the next
    round or job broadcasts the same bytes again."""
    _check(SendState.BROADCAST, SendState.SIGNED)
    async with unit(rt.engine) as work:
        if await _lock_open(work, batch_id) is None:
            return
        again = (
            await work.conn.execute(
                sends.update()
                .where(sends.c.batch_id == batch_id, sends.c.state == SendState.BROADCAST)
                .values(state=SendState.SIGNED, updated_at=now())
                .returning(*sends.c)
            )
        ).all()
        for row in sorted(again, key=lambda r: r.id):
            work.audit(send_entry("send.dropped", row, batch_id=batch_id))


async def _confirm(rt: Runtime, batch_id: int, fee_on_chain: int | None) -> None:
    """Every payout of the batch ``confirmed`` with its share of the fee, the inputs spent, the
    change spendable, the mixes completed: one transaction."""
    moment = now()
    async with unit(rt.engine) as work:
        batch = await _lock_open(work, batch_id)
        if batch is None:
            return
        if fee_on_chain is not None and fee_on_chain != int(batch.fee):  # pragma: no cover - the node disagrees
            log.error("batch fee on chain differs from the signed one", batch_id=batch_id, on_chain=fee_on_chain)
        shares = {int(k): int(v) for k, v in batch.fee_shares.items()}
        members = (
            await work.conn.execute(
                select(sends)
                .where(sends.c.batch_id == batch_id, sends.c.state.in_([SendState.SIGNED, SendState.BROADCAST]))
                .order_by(sends.c.id)
                .with_for_update()
            )
        ).all()
        mix_ids: set[str] = set()
        for row in members:
            _check(SendState(row.state), SendState.CONFIRMED)
            done = (
                await work.conn.execute(
                    sends.update()
                    .where(sends.c.id == row.id, sends.c.state == row.state)
                    .values(
                        state=SendState.CONFIRMED,
                        confirmed_at=moment,
                        broadcast_at=row.broadcast_at or moment,
                        network_fee_paid=shares[row.id],
                        last_error=None,
                        updated_at=moment,
                    )
                    .returning(*sends.c)
                )
            ).one()
            work.audit(send_entry("send.confirmed", done, recovered=False, batch_id=batch_id))
            mix_ids.add(done.mix_id)
        await work.conn.execute(
            utxos.update().where(utxos.c.reserved_by_batch == batch_id).values(state="spent", updated_at=moment)
        )
        # Only from `unconfirmed`: a change coin another batch or a pool move already reserved or
        # spent must not come back as `available` (it would be spent twice and miscounted).
        await work.conn.execute(
            utxos.update()
            .where(utxos.c.created_by_batch == batch_id, utxos.c.state == "unconfirmed")
            .values(state="available", updated_at=moment)
        )
        await work.conn.execute(
            payout_batches.update()
            .where(payout_batches.c.id == batch_id)
            .values(state=CONFIRMED, confirmed_at=moment, updated_at=moment)
        )
        await complete_mixes(work, mix_ids)


async def _replan_if_inputs_spent(
    rt: Runtime, adapter: UtxoChainAdapter, batch_id: int, prepared: PreparedSend
) -> bool:
    """If the node proves the batch can never confirm (absent, an input spent elsewhere),
    retire it and schedule its payouts again, in one transaction. Returns True if re-planned."""
    async with rt.engine.connect() as conn:
        inputs = (await conn.execute(select(utxos).where(utxos.c.reserved_by_batch == batch_id))).all()
    coins = [coin_of(c) for c in inputs]
    if not await adapter.is_spent_elsewhere(prepared, coins):
        return False
    still_unspent = {(c.txid, c.vout) for c in coins if await adapter.unspent_amount(c.txid, c.vout) is not None}
    _check(SendState.SIGNED, SendState.SCHEDULED)
    _check(SendState.BROADCAST, SendState.SCHEDULED)
    moment = now()
    async with unit(rt.engine) as work:
        if await _lock_open(work, batch_id) is None:
            return False
        again = (
            await work.conn.execute(
                sends.update()
                .where(sends.c.batch_id == batch_id, sends.c.state.in_([SendState.SIGNED, SendState.BROADCAST]))
                .values(
                    state=SendState.SCHEDULED,
                    batch_id=None,
                    txid=None,
                    raw_tx=None,
                    signed_at=None,
                    broadcast_at=None,
                    last_error=None,
                    updated_at=moment,
                )
                .returning(*sends.c)
            )
        ).all()
        for coin in coins:
            await work.conn.execute(
                utxos.update()
                .where(utxos.c.reserved_by_batch == batch_id, utxos.c.txid == coin.txid, utxos.c.vout == coin.vout)
                .values(
                    state="available" if (coin.txid, coin.vout) in still_unspent else "spent",
                    reserved_by_batch=None,
                    updated_at=moment,
                )
            )
        await work.conn.execute(utxos.delete().where(utxos.c.created_by_batch == batch_id))
        await work.conn.execute(
            payout_batches.update().where(payout_batches.c.id == batch_id).values(state=REPLANNED, updated_at=moment)
        )
        for row in sorted(again, key=lambda r: r.id):
            work.audit(
                send_entry("send.replanned", row, batch_id=batch_id, reason="an input was spent by another transaction")
            )
    log.warning("batch inputs spent elsewhere; its payouts re-planned", batch_id=batch_id, txid=prepared.txid)
    return True
