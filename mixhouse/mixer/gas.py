"""The gas of a token sweep: the pool sends a deposit address exactly the ETH its sweep needs.

The refund of a held token deposit leaves from its deposit address too and is paid for the same
way (one top-up per deposit: a held deposit is never swept).

A token deposit address holds tokens and no ETH, so its sweep (signed first, its price fixed:
:meth:`~mixhouse.chains.evm.token.Erc20Adapter.gas_needed`) is broadcast only once a gas
top-up from the token pool has confirmed. The top-up is a ``sends`` row of kind ``gas``, of the
token's asset, whose ``amount`` and fees are **wei** (the chain's native coin, not the token):
it belongs to no token books (reconciliation counts sweeps and payouts only) and is the ETH line
of the token pool (:func:`gas_spent`).

Exactly once, across crashes: the row is inserted and signed (raw tx, txid, nonce from the
pool's counter) in one transaction before anything leaves; a later run finds it and only
rebroadcasts the same bytes or checks its receipt. A deposit address whose balance already
covers the sweep (a top-up that landed, a retried sweep) gets no second top-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Row, func, select
from sqlalchemy.dialects.postgresql import insert

from mixhouse.chains.base import SendState as ChainSendState
from mixhouse.chains.evm.token import Erc20Adapter
from mixhouse.db.tables import gas_tanks, pool_generations, sends
from mixhouse.errors import BroadcastRejected, SendOutcomeUnknown
from mixhouse.keys.audited import key_use_entries, recording_key_uses
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.states import SendState, now, transition
from mixhouse.unit import unit

log = structlog.get_logger(__name__)

GAS_KIND = "gas"


@dataclass(frozen=True, slots=True)
class GasSpent:
    """The ETH a token's pool spent on sweeps' gas, in wei.

    Attributes:
        topups: wei sent to deposit addresses by confirmed top-ups.
        topup_fees: wei the top-up transactions themselves cost the pool.
        in_flight: the most the top-ups not yet confirmed can cost (value + fee cap).
    """

    topups: int
    topup_fees: int
    in_flight: int


async def _gas_row(rt: Runtime, deposit_id: int) -> Row[Any] | None:
    async with rt.engine.connect() as conn:
        return (
            await conn.execute(select(sends).where(sends.c.kind == GAS_KIND, sends.c.deposit_id == deposit_id))
        ).first()


async def sweep_gas_ready(rt: Runtime, adapter: Erc20Adapter, sweep: Row[Any]) -> bool:
    """Advance the gas top-up of a signed token ``sweep`` (or refund: any send from a deposit
    address); ``True`` once the deposit address can pay for it (the top-up confirmed, or none
    was needed).

    Raises:
        ChainError: the node failed (the caller's job retries).
        BroadcastRejected: the pool cannot pay the top-up (its ETH is short): retried later.
    """
    from mixhouse.mixer.sends import allocate_nonce, prepared_of  # noqa: PLC0415 - sends imports this module

    gas = await _gas_row(rt, sweep.deposit_id)
    if gas is None:
        need = adapter.gas_needed(prepared_of(sweep)) - await adapter.gas_balance(sweep.from_address)
        if need <= 0:
            return True
        # The tank of the pool generation a sweep pays into pays its gas (mixer/pool_rotation.py).
        # A sweep stored into a generation that has since been rotated out must not be topped
        # up by the active one: the active tank is empty until the draining generation's gas
        # move lands, and that move waits for every send into the draining address, this sweep
        # included, to finish (a deadlock, seen by tests/test_key_rotation_token_crash.py). The
        # draining tank still holds its ETH then, and this top-up is one more send from it that
        # its drain waits for. A refund (to the user) is paid by the active tank.
        source = adapter.pool_address
        if sweep.kind == "sweep" and adapter.pool_key_of(sweep.to_address) is not None:
            source = sweep.to_address
        async with unit(rt.engine) as work:
            nonce = await allocate_nonce(work, adapter, source)
            assert nonce is not None  # an EVM address always has one
            with recording_key_uses() as uses:
                prepared = await adapter.prepare_gas_topup(
                    to_address=sweep.from_address, wei=need, nonce=nonce, from_address=source
                )
            gas = (
                await work.conn.execute(
                    sends.insert()
                    .values(
                        kind=GAS_KIND,
                        asset=sweep.asset,
                        mix_id=sweep.mix_id,
                        deposit_id=sweep.deposit_id,
                        from_address=source,
                        from_key_index=None,
                        to_address=sweep.from_address,
                        amount=need,
                        network_fee_reserved=prepared.network_fee_max,
                        due_at=now(),
                        state=SendState.SIGNED,
                        raw_tx=prepared.raw_tx,
                        txid=prepared.txid,
                        nonce=prepared.nonce,
                        signed_at=now(),
                        attempts=1,
                    )
                    .returning(*sends.c)
                )
            ).one()
            from mixhouse.mixer.sends import send_entry  # noqa: PLC0415 - see above

            work.audit(send_entry("send.signed", gas, for_sweep=sweep.id))
            # The pool key signed it: a key use like any send's (issue 12: every key use audited).
            for entry in key_use_entries(
                uses, entity_type="send", entity_id=str(gas.id), purpose=GAS_KIND, asset=gas.asset
            ):
                work.audit(entry)
    if gas.state == SendState.CONFIRMED:
        return True
    prepared = prepared_of(gas)
    if gas.state == SendState.SIGNED:
        try:
            await adapter.broadcast(prepared)
        except SendOutcomeUnknown:
            return False  # the receipt check below, next time, tells
        except BroadcastRejected:
            log.exception("gas top-up refused: is the token pool's ETH short?", send_id=gas.id, asset=gas.asset)
            return False
        async with unit(rt.engine) as work:
            gas = await transition(work.conn, sends, gas.id, SendState.SIGNED, SendState.BROADCAST, broadcast_at=now())
            from mixhouse.mixer.sends import send_entry  # noqa: PLC0415 - see above

            work.audit(send_entry("send.broadcast", gas))
    check = await adapter.evm.check_send(prepared)
    if check.state is ChainSendState.NOT_FOUND:
        async with unit(rt.engine) as work:
            await transition(work.conn, sends, gas.id, SendState.BROADCAST, SendState.SIGNED)
        return False
    if check.state is not ChainSendState.CONFIRMED:
        if check.state is ChainSendState.FAILED:
            log.error("gas top-up reverted; operator attention needed", send_id=gas.id, asset=gas.asset)
        return False
    async with unit(rt.engine) as work:
        done = await transition(
            work.conn,
            sends,
            gas.id,
            SendState.BROADCAST,
            SendState.CONFIRMED,
            confirmed_at=now(),
            network_fee_paid=check.network_fee_paid,
        )
        from mixhouse.mixer.sends import send_entry  # noqa: PLC0415 - see above

        work.audit(send_entry("send.confirmed", done))
    return True


async def gas_spent(rt: Runtime, asset: str) -> GasSpent:
    """What the token ``asset``'s pool spent in ETH on top-ups (its own line of the ETH books).

    The gas of the token transfers themselves is paid by their senders: the top-up covers a
    sweep's; the pool pays its payouts' (``gasUsed * P`` of each receipt).
    """
    confirmed = sends.c.state == SendState.CONFIRMED
    async with rt.engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    func.coalesce(func.sum(sends.c.amount).filter(confirmed), 0),
                    func.coalesce(func.sum(sends.c.network_fee_paid).filter(confirmed), 0),
                    func.coalesce(func.sum(sends.c.amount + sends.c.network_fee_reserved).filter(~confirmed), 0),
                ).where(sends.c.kind == GAS_KIND, sends.c.asset == asset)
            )
        ).one()
    return GasSpent(topups=int(row[0]), topup_fees=int(row[1]), in_flight=int(row[2]))


# How many recent confirmed top-ups the tank's cost per send is the mean of.
SEND_COST_SAMPLE = 20
# Below this many sends' worth of ETH the tank is low (this log line and the alert agree).
LOW_TANK_SENDS = 20


@dataclass(frozen=True, slots=True)
class GasTank:
    """The ETH a token pool holds to pay gas, as read now.

    Attributes:
        asset: the token's code.
        address: the pool (tank) address.
        balance_wei: its ETH balance, wei.
        send_cost_wei: the mean cost of one of its last :data:`SEND_COST_SAMPLE` confirmed
            top-ups (value plus the top-up's own fee), wei; ``None`` before the first. A payout's
            gas is of the same order (one token transfer), so ``balance_wei // send_cost_wei`` is
            about how many more sends the tank pays for.
    """

    asset: str
    address: str
    balance_wei: int
    send_cost_wei: int | None


async def record_gas_tank(rt: Runtime, adapter: Erc20Adapter) -> GasTank:
    """Read the token pool's ETH balance (summed over its pool key generations not yet retired:
    during a rotation's drain the tank is split) and store it (table ``gas_tanks``, one row per token,
    overwritten), with the recent cost per send; /metrics exports both
    (``mixhouse_gas_tank_wei``, ``mixhouse_gas_send_cost_wei``; alert ``MixhouseGasTankLow``).

    Called by every reconciliation of the token. An observation, not a money movement: nothing
    is audited (the top-ups are, as sends).

    Raises:
        ChainError: the node failed; nothing is stored.
    """
    pool = adapter.pool_address
    # While a rotation drains (mixer/pool_rotation.py) the tank is split over the generations not
    # yet retired: the old one's ETH moves to the new one, so their sum is what the pool has.
    async with rt.engine.connect() as conn:
        live = (
            await conn.execute(
                select(pool_generations.c.address).where(
                    pool_generations.c.asset == str(adapter.asset), pool_generations.c.state != "retired"
                )
            )
        ).scalars()
        addresses = sorted({pool, *live})
    balance = sum([await adapter.gas_balance(address) for address in addresses])
    recent = (
        select((sends.c.amount + func.coalesce(sends.c.network_fee_paid, 0)).label("cost"))
        .where(sends.c.kind == GAS_KIND, sends.c.asset == adapter.asset, sends.c.state == SendState.CONFIRMED)
        .order_by(sends.c.confirmed_at.desc())
        .limit(SEND_COST_SAMPLE)
        .subquery()
    )
    async with unit(rt.engine) as work:
        mean = (await work.conn.execute(select(func.avg(recent.c.cost)))).scalar_one()
        cost = None if mean is None else int(mean)
        values = {"address": pool, "checked_at": now(), "balance_wei": balance, "send_cost_wei": cost}
        await work.conn.execute(
            insert(gas_tanks)
            .values(asset=str(adapter.asset), **values)
            .on_conflict_do_update(index_elements=[gas_tanks.c.asset], set_=values)
        )
    if cost is not None and balance < LOW_TANK_SENDS * cost:
        log.warning(
            "token pool's gas tank is low: fund its address with ETH",
            asset=str(adapter.asset),
            balance_wei=balance,
            sends_left=balance // cost if cost else None,
        )
    return GasTank(str(adapter.asset), pool, balance, cost)
