"""A deposit joins the pool: its payouts are planned and scheduled, in the caller's unit.

The payouts are rows in ``scheduled`` with a due time; the payout rounds release and send them.

Account chains pool a deposit when its sweep into the pool confirms; UTXO chains pool it as
soon as it is accepted (its output becomes a pool coin). Both come through :func:`pool_deposit`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, select, text

from mixhouse.audit import AuditEntry
from mixhouse.chains.base import ChainAdapter, FeeQuote, outpoint_of
from mixhouse.db.tables import deposits, mixes, sends
from mixhouse.errors import IllegalTransition, InvalidAmount
from mixhouse.mixer.planner import Plan, plan_payouts
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.states import (
    DEPOSIT_TRANSITIONS,
    MIX_TRANSITIONS,
    DepositState,
    MixState,
    SendState,
    now,
    transition,
)
from mixhouse.money import asset_info
from mixhouse.unit import Unit


def serial_key_for(rt: Runtime, asset: str, from_address: str, to_address: str) -> str | None:
    """The in-flight key of a send on a chain without idempotent sends (``sends.serial_key``),
    ``None`` where the chain has txids."""
    adapter = rt.adapter(asset)
    return None if adapter.has_idempotent_send else f"{adapter.asset.value}:{from_address}->{to_address}"


def sweep_amount(adapter: ChainAdapter, deposit_amount: int, quote: FeeQuote) -> int:
    """What a deposit's sweep moves to the pool: the deposit less the sweep's network fee, which
    the chain takes from it; the whole deposit where the fee is paid in another asset
    (``adapter.sweep_fee_in_pool``: a token, whose gas the pool pays in ETH)."""
    return deposit_amount if adapter.sweep_fee_in_pool else deposit_amount - quote.per_send


def pooled_by_sweep(adapter: ChainAdapter, moved: int, fee_reserved: int) -> int:
    """What a confirmed sweep of ``moved`` base units pools for its deposit's payouts: all of it,
    or, where the pool kept the sweep's fee (:func:`sweep_amount`), ``moved - fee_reserved``
    (the fee charged to the user stays in the pool, which paid the gas)."""
    return moved - fee_reserved if adapter.sweep_fee_in_pool else moved


def deposit_send_row(
    rt: Runtime, dep: Row[Any], mix: Row[Any], *, kind: str, to_address: str, amount: int, network_fee: int
) -> dict[str, Any]:
    """The ``sends`` row of a send from a deposit's own address: its sweep to the pool (kind
    ``sweep``) or an operator's refund of it (kind ``refund``), due now, ``scheduled``.

    Args:
        dep, mix: the deposit's and its mix's rows (the mix gives the deposit key's index).
        amount: base units the recipient gets; ``network_fee``: base units reserved for the
            chain's fee (both from the deposit's amount).
    """
    return {
        "kind": kind,
        "asset": dep.asset,
        "mix_id": dep.mix_id,
        "deposit_id": dep.id,
        "from_address": dep.deposit_address,
        "from_key_index": mix.deposit_key_index,
        "to_address": to_address,
        "amount": amount,
        "network_fee_reserved": network_fee,
        "due_at": now(),
        "state": SendState.SCHEDULED,
        "serial_key": serial_key_for(rt, dep.asset, dep.deposit_address, to_address),
    }


def deposit_coin_row(dep: Row[Any], mix: Row[Any], *, state: str) -> dict[str, Any]:
    """UTXO chains: the ``utxos`` row of a deposit's own output (its outpoint is the deposit's
    ``chain_ref``), owned by its mix, in ``state`` (``available`` once pooled, ``reserved`` by
    an operator's refund)."""
    txid, vout = outpoint_of(dep.chain_ref)
    return {
        "asset": dep.asset,
        "txid": txid,
        "vout": vout,
        "address": dep.deposit_address,
        "key_chain": 0,
        "key_index": mix.deposit_key_index,
        "amount": dep.amount,
        "owner_mix_id": mix.id,
        "deposit_id": dep.id,
        "state": state,
    }


def latest_release(seen_at: datetime, max_wait_seconds: int, round_seconds: int) -> datetime:
    """The last moment a deposit's payouts may be released and still leave within the mix's
    maximum wait of the deposit's arrival: two rounds and 5% of the wait early, since a busy
    worker's rounds start and finish late."""
    margin = 2 * round_seconds + max_wait_seconds / 20
    return seen_at + timedelta(seconds=max(0.0, max_wait_seconds - margin))


def payout_rows(
    rt: Runtime, dep: Row[Any], mix: Row[Any], plan: Plan, *, quote: FeeQuote, pooled_at: datetime
) -> list[dict[str, Any]]:
    """The ``sends`` rows of a pooled deposit's planned pieces (one place for both poolers)."""
    adapter = rt.adapter(dep.asset)
    deadline = latest_release(dep.created_at, mix.max_wait_seconds, rt.settings.payout_round_seconds)
    return [
        {
            "kind": "payout",
            "asset": dep.asset,
            "mix_id": dep.mix_id,
            "deposit_id": dep.id,
            "from_address": adapter.pool_address,
            "from_key_index": None,
            "to_address": p.to_address,
            "amount": p.amount,
            "network_fee_reserved": quote.per_send,
            # Never later than the mix's promise: a deposit pooled late (a backlog of sweeps)
            # has its pieces due by the latest release moment, not past it.
            "due_at": max(pooled_at, min(pooled_at + timedelta(seconds=p.delay_seconds), deadline)),
            "state": SendState.SCHEDULED,
            "serial_key": serial_key_for(rt, dep.asset, adapter.pool_address, p.to_address),
        }
        for p in plan.payouts
    ]


async def pool_deposit(
    rt: Runtime,
    work: Unit,
    *,
    deposit_id: int,
    from_state: DepositState,
    pooled_amount: int,
    quote: FeeQuote,
    extra: dict[str, Any] | None = None,
) -> Row[Any]:
    """Move the deposit to ``pooled`` and schedule its payouts, in ``work``'s transaction.

    Args:
        deposit_id: the deposit.
        from_state: its current state (``sweeping`` on account chains, ``seen`` on UTXO chains).
        pooled_amount: base units that reached the pool for it (the deposit minus the sweep's
            network fee on account chains; the whole deposit on UTXO chains).
        quote: the network fee reserved per payout.
        extra: more columns to set on the deposit row (e.g. ``confirmations``).

    Returns:
        The updated deposit row.

    Raises:
        InvalidAmount: the pooled amount no longer covers fee, network fees and dust.
        IllegalTransition: the deposit is not in ``from_state``.
    """
    dep = (await work.conn.execute(select(deposits).where(deposits.c.id == deposit_id))).one()
    mix = (await work.conn.execute(select(mixes).where(mixes.c.id == dep.mix_id).with_for_update())).one()
    plan = plan_payouts(
        pooled=pooled_amount,
        fee_min_bps=mix.fee_min_bps,
        fee_max_bps=mix.fee_max_bps,
        withdrawal_addresses=list(mix.withdrawal_addresses),
        network_fee_per_payout=quote.per_send,
        min_payout=asset_info(dep.asset).dust,
        delay_min_seconds=mix.delay_min_seconds,
        delay_max_seconds=mix.delay_max_seconds,
        rng=rt.rng,
    )
    network_fee = (dep.network_fee_amount or 0) + plan.network_fee
    pooled_at = now()
    pooled = await transition(
        work.conn,
        deposits,
        dep.id,
        from_state,
        DepositState.POOLED,
        fee_amount=plan.fee,
        network_fee_amount=network_fee,
        payout_total=plan.payout_total,
        pooled_at=pooled_at,
        quantum=plan.quantum,
        **(extra or {}),
    )
    rows = payout_rows(rt, dep, mix, plan, quote=quote, pooled_at=pooled_at)
    # No job per payout: payout rounds (``mixer/rounds.py``) pick them up once they are due and
    # the release gate lets this deposit's payouts go, so payouts of many mixes leave together.
    await work.conn.execute(sends.insert().values(rows))
    if mix.state != MixState.MIXING:
        await transition(work.conn, mixes, mix.id, mix.state, MixState.MIXING)
        work.audit(AuditEntry("mix.mixing", "mix", mix.id, asset=mix.asset))
    work.audit(
        AuditEntry(
            "deposit.pooled",
            "deposit",
            str(dep.id),
            asset=dep.asset,
            amount=pooled_amount,
            details={
                "mix_id": mix.id,
                "fee": str(plan.fee),
                "network_fee": str(network_fee),
                "payouts": len(plan.payouts),
                "quantum": str(plan.quantum),
                "payout_total": str(plan.payout_total),
            },
        )
    )
    return pooled


_POOL_MANY_SQL = text(
    """
    UPDATE deposits d
    SET state = :to_state, fee_amount = v.fee, network_fee_amount = v.network_fee,
        payout_total = v.payout_total, quantum = v.quantum, pooled_at = :at, updated_at = :at
    FROM unnest(CAST(:ids AS bigint[]), CAST(:fees AS numeric[]), CAST(:network_fees AS numeric[]),
                CAST(:totals AS numeric[]), CAST(:quanta AS numeric[]))
         AS v(id, fee, network_fee, payout_total, quantum)
    WHERE d.id = v.id AND d.state = :from_state
    RETURNING d.id
    """
)


async def pool_deposits(
    rt: Runtime, work: Unit, items: list[tuple[int, int]], *, from_state: DepositState, quote: FeeQuote
) -> list[int]:
    """:func:`pool_deposit` for many deposits in a handful of statements, in ``work``'s
    transaction: ``items`` are ``(deposit_id, pooled_amount)``.

    A deposit whose payouts cannot be planned (:class:`~mixhouse.errors.InvalidAmount`) is left
    as it is and not returned: the caller takes the one-by-one path for it.

    Returns:
        The ids of the deposits pooled.

    Raises:
        IllegalTransition: a deposit is no longer in ``from_state`` (nothing is kept: the
            caller's transaction must roll back).
    """
    if not items:
        return []
    if (from_state, DepositState.POOLED) not in DEPOSIT_TRANSITIONS:
        raise IllegalTransition(f"deposits: {from_state} -> pooled is not allowed")
    amounts = dict(items)
    deps = {d.id: d for d in await work.conn.execute(select(deposits).where(deposits.c.id.in_(list(amounts))))}
    mix_ids = sorted({d.mix_id for d in deps.values()})
    # Mix rows locked in id order: one lock order across concurrent writers.
    mix_rows = {
        m.id: m
        for m in await work.conn.execute(
            select(mixes).where(mixes.c.id.in_(mix_ids)).order_by(mixes.c.id).with_for_update()
        )
    }
    pooled_at = now()
    planned: list[tuple[Row[Any], Plan, int]] = []
    for deposit_id, pooled_amount in items:
        dep = deps[deposit_id]
        mix = mix_rows[dep.mix_id]
        try:
            plan = plan_payouts(
                pooled=pooled_amount,
                fee_min_bps=mix.fee_min_bps,
                fee_max_bps=mix.fee_max_bps,
                withdrawal_addresses=list(mix.withdrawal_addresses),
                network_fee_per_payout=quote.per_send,
                min_payout=asset_info(dep.asset).dust,
                delay_min_seconds=mix.delay_min_seconds,
                delay_max_seconds=mix.delay_max_seconds,
                rng=rt.rng,
            )
        except InvalidAmount:
            continue
        planned.append((dep, plan, (dep.network_fee_amount or 0) + plan.network_fee))
    if not planned:
        return []
    moved = (
        await work.conn.execute(
            _POOL_MANY_SQL,
            {
                "ids": [d.id for d, _, _ in planned],
                "fees": [p.fee for _, p, _ in planned],
                "network_fees": [nf for _, _, nf in planned],
                "totals": [p.payout_total for _, p, _ in planned],
                "quanta": [p.quantum for _, p, _ in planned],
                "to_state": DepositState.POOLED,
                "from_state": from_state,
                "at": pooled_at,
            },
        )
    ).all()
    if len(moved) != len(planned):
        raise IllegalTransition(f"{len(planned) - len(moved)} deposits are no longer {from_state!r}")
    rows = [
        row
        for dep, plan, _ in planned
        for row in payout_rows(rt, dep, mix_rows[dep.mix_id], plan, quote=quote, pooled_at=pooled_at)
    ]
    # No jobs: payout rounds pick the payouts up (see pool_deposit).
    await work.conn.execute(sends.insert(), rows)
    by_state: dict[str, list[str]] = {}
    for mix_id in sorted({dep.mix_id for dep, _, _ in planned}):
        if mix_rows[mix_id].state != MixState.MIXING:
            by_state.setdefault(mix_rows[mix_id].state, []).append(mix_id)
    for state, ids in by_state.items():
        if (state, MixState.MIXING) not in MIX_TRANSITIONS:
            raise IllegalTransition(f"mixes: {state} -> mixing is not allowed")
        await work.conn.execute(
            mixes.update()
            .where(mixes.c.id.in_(ids), mixes.c.state == state)
            .values(state=MixState.MIXING, updated_at=pooled_at)
        )
        for mix_id in ids:
            work.audit(AuditEntry("mix.mixing", "mix", mix_id, asset=mix_rows[mix_id].asset))
    for dep, plan, network_fee in planned:
        work.audit(
            AuditEntry(
                "deposit.pooled",
                "deposit",
                str(dep.id),
                asset=dep.asset,
                amount=amounts[dep.id],
                details={
                    "mix_id": dep.mix_id,
                    "fee": str(plan.fee),
                    "network_fee": str(network_fee),
                    "payouts": len(plan.payouts),
                    "quantum": str(plan.quantum),
                    "payout_total": str(plan.payout_total),
                },
            )
        )
    return [dep.id for dep, _, _ in planned]
