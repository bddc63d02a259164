"""Operator refunds of held deposits: :func:`request_refund` and, when the send confirms,
:func:`mark_refunded`.

A held deposit (outside the mix's limits, see ``deposits._hold_reason``) was never swept: its
coins still sit at its deposit address (account chains) or as its own output (UTXO chains),
never in the pool. A refund is a ``sends`` row of kind ``refund`` from there to an address the
operator gives, for the deposit's amount minus the network fee (ETH gas; Bitcoin the miner fee
of one input and one output, no change; Jobcoin none; an ERC-20 token none: the pool first sends
the deposit address the refund's exact gas in ETH, as for a sweep, :mod:`mixhouse.mixer.gas`,
and the user gets every token back), and it goes ``scheduled -> signed -> broadcast ->
confirmed`` through the same job and the same exactly-once rules as every send
(:mod:`mixhouse.mixer.sends`). The deposit moves ``held -> refunding`` with the send
scheduled, its job enqueued and ``deposit.refund_requested`` audited, in one transaction; and
``refunding -> refunded`` with ``deposit.refunded`` when the send confirms.

Exactly once: the ``held -> refunding`` transition is a conditional UPDATE, so of two
concurrent requests (a double click, a retry, two operators) one wins and the other, after the
first commits, finds the deposit ``refunding``; a unique index (``uq_sends_one_refund``) backs
it. A repeated request for the same address answers the existing refund
(``RefundRequest.created`` false, HTTP 200); one for another address is refused
(:class:`RefundConflict`, HTTP 409): a refund in flight is never redirected.

Refused: frozen deposits (sanctions: frozen funds stay frozen), deposits in any other state
than held, an address that is malformed or ours (the pool or any deposit address), and a
deposit too small to pay its own network fee plus the dust limit.

On UTXO chains the held deposit's output is recorded as a coin when the refund is scheduled,
already ``reserved`` by the refund (never ``available``): pool coin selection never picks it,
and the refund's transaction spends it alone (``UtxoChainAdapter.prepare_single_spend``).

Reconciliation is unaffected: a held deposit never entered the pool's books, and its refund
leaves from the deposit address, not the pool (``reconcile`` counts only sweeps into and
payouts out of the pool, and on UTXO chains only ``available`` coins).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.exc import IntegrityError

from mixhouse.audit import AuditEntry
from mixhouse.chains.base import UtxoChainAdapter
from mixhouse.chains.evm.token import Erc20Adapter
from mixhouse.db.tables import deposits, mixes, sends, utxos
from mixhouse.errors import IllegalTransition, InvalidAddress, InvalidAmount, NotFound
from mixhouse.jobs import send_job
from mixhouse.mixer.pooling import deposit_coin_row, deposit_send_row
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.states import DepositState, transition
from mixhouse.mixer.withdrawals import ours
from mixhouse.money import asset_info
from mixhouse.unit import Unit, unit

FROZEN_REASON = "the deposit is frozen by sanctions screening: frozen funds stay frozen and are never refunded"
IS_POOL = "a refund address cannot be the pool address"
IS_DEPOSIT = "a refund address cannot be a deposit address of this service"


class RefundConflict(IllegalTransition):
    """The deposit cannot be refunded as asked (frozen, not held, or already being refunded
    to another address). HTTP 409."""


@dataclass(frozen=True, slots=True)
class RefundRequest:
    """The outcome of :func:`request_refund`.

    Attributes:
        send: the refund's ``sends`` row as a mapping (amounts in base units).
        deposit_state: the deposit's state now (``refunding`` or ``refunded``).
        created: ``True`` when this call scheduled the refund, ``False`` when it already
            existed (a repeated request for the same address).
    """

    send: dict[str, Any]
    deposit_state: str
    created: bool


async def request_refund(rt: Runtime, *, deposit_id: int, address: str, operator: str) -> RefundRequest:
    """Refund held deposit ``deposit_id`` to ``address``, exactly once (see the module docstring).

    Args:
        rt: the runtime (its adapters quote the fee and validate the address).
        deposit_id: ``deposits.id``.
        address: what the operator typed; normalised by the chain's adapter.
        operator: who asked (an operator's login name, or ``"api key"``), for the audit log.

    Returns:
        The refund, new or existing.

    Raises:
        NotFound: no deposit has this id.
        RefundConflict: frozen, not held, or already refunding to another address.
        InvalidAddress: malformed for the chain, the pool address, or a deposit address of ours.
        InvalidAmount: the deposit does not cover the refund's network fee plus the dust limit.
        InvalidInput: the deposit's asset is not enabled here.
        ChainError: the fee quote failed; nothing was changed.
    """
    dep = await _deposit(rt, deposit_id)
    if dep.state == DepositState.FROZEN:
        raise RefundConflict(FROZEN_REASON)  # before anything else: no address makes it refundable
    adapter = rt.adapter(dep.asset)
    target = adapter.normalize_address(address)
    if dep.state != DepositState.HELD:
        return await _existing_or_refused(rt, dep, target)
    if target.lower() == adapter.pool_address.lower():
        raise InvalidAddress(IS_POOL)
    async with rt.engine.connect() as conn:
        if await ours(conn, dep.asset, [target]):
            raise InvalidAddress(IS_DEPOSIT)
    # Network I/O before the transaction.
    if isinstance(adapter, UtxoChainAdapter):
        rate = await adapter.fee_rate()
        fee = adapter.single_spend_fee(target, rate)
        fee_detail = f"one input and one output at {rate} sat/vB"
    elif isinstance(adapter, Erc20Adapter):
        # The pool's gas tank pays the refund's gas in ETH (mixer/gas.py, its ETH line): a token
        # fee taken here would stay behind at the deposit address, in no books. The user gets
        # back every token they sent.
        fee, fee_detail = 0, "none in tokens (the pool pays the gas in ETH)"
    else:
        quote = await adapter.quote_network_fee()
        fee, fee_detail = quote.per_send, quote.detail
    amount = int(dep.amount) - fee
    dust = asset_info(dep.asset).dust
    if amount < dust:
        raise InvalidAmount(
            f"the deposit of {dep.amount} base units does not cover the refund's network fee of {fee} "
            f"base units ({fee_detail}) and the dust limit of {dust}"
        )
    try:
        async with unit(rt.engine) as work:
            row = await _schedule(rt, work, dep, target=target, amount=amount, fee=fee, operator=operator)
    except (IllegalTransition, IntegrityError):
        # Another request won the race (it committed while we waited on the row): answer with it.
        return await _existing_or_refused(rt, await _deposit(rt, deposit_id), target)
    return RefundRequest(send=dict(row._mapping), deposit_state=DepositState.REFUNDING, created=True)


async def _deposit(rt: Runtime, deposit_id: int) -> Row[Any]:
    async with rt.engine.connect() as conn:
        dep = (await conn.execute(select(deposits).where(deposits.c.id == deposit_id))).first()
    if dep is None:
        raise NotFound("no deposit with this id")
    return dep


async def refund_of(rt: Runtime, deposit_id: int) -> dict[str, Any] | None:
    """The refund ``sends`` row of deposit ``deposit_id`` as a mapping, ``None`` if it has none."""
    async with rt.engine.connect() as conn:
        row = (
            await conn.execute(select(sends).where(sends.c.deposit_id == deposit_id, sends.c.kind == "refund"))
        ).first()
    return None if row is None else dict(row._mapping)


async def _existing_or_refused(rt: Runtime, dep: Row[Any], target: str) -> RefundRequest:
    """A deposit that is not (or no longer) held: the existing refund to ``target``, or why not."""
    if dep.state == DepositState.FROZEN:
        raise RefundConflict(FROZEN_REASON)
    existing = await refund_of(rt, dep.id) if dep.state in (DepositState.REFUNDING, DepositState.REFUNDED) else None
    if existing is None:
        raise RefundConflict(f"only held deposits can be refunded; this one is {dep.state}")
    if existing["to_address"].lower() != target.lower():
        raise RefundConflict(
            f"the deposit is already {dep.state} to another address ({existing['to_address']}); a refund is never "
            "redirected"
        )
    return RefundRequest(send=existing, deposit_state=str(dep.state), created=False)


async def _schedule(
    rt: Runtime, work: Unit, dep: Row[Any], *, target: str, amount: int, fee: int, operator: str
) -> Row[Any]:
    """``held -> refunding``, the refund send, its job and the audit entry, in ``work``."""
    mix = (await work.conn.execute(select(mixes).where(mixes.c.id == dep.mix_id))).one()
    await transition(work.conn, deposits, dep.id, DepositState.HELD, DepositState.REFUNDING, network_fee_amount=fee)
    row = (
        await work.conn.execute(
            sends.insert()
            .values(deposit_send_row(rt, dep, mix, kind="refund", to_address=target, amount=amount, network_fee=fee))
            .returning(*sends.c)
        )
    ).one()
    if isinstance(rt.adapter(dep.asset), UtxoChainAdapter):
        # The held deposit's output, recorded now as reserved by its refund: pool coin selection
        # and reconciliation only see `available` coins, and its confirmation marks it spent.
        coin = deposit_coin_row(dep, mix, state="reserved")
        await work.conn.execute(utxos.insert().values(**coin, reserved_by_send=row.id))
    work.defer(send_job(row.id))
    work.audit(
        AuditEntry(
            "deposit.refund_requested",
            "deposit",
            str(dep.id),
            actor="admin",
            asset=dep.asset,
            amount=amount,
            details={
                "operator": operator,
                "address": target,
                "send_id": row.id,
                "deposit_amount": str(dep.amount),
                "network_fee_reserved": str(fee),
                "held_because": dep.reason,
            },
        )
    )
    return row


async def mark_refunded(work: Unit, send: Row[Any]) -> None:
    """The refund ``send`` confirmed: its deposit goes ``refunding -> refunded``, audited with
    the txid (``None`` on Jobcoin, which has none), in ``work`` (the confirmation's unit).

    Raises:
        IllegalTransition: the deposit is not ``refunding`` (a data error).
    """
    await transition(work.conn, deposits, send.deposit_id, DepositState.REFUNDING, DepositState.REFUNDED)
    work.audit(
        AuditEntry(
            "deposit.refunded",
            "deposit",
            str(send.deposit_id),
            asset=send.asset,
            amount=send.amount,
            details={
                "send_id": send.id,
                "address": send.to_address,
                "txid": send.txid,
                "network_fee_paid": None if send.network_fee_paid is None else str(send.network_fee_paid),
            },
        )
    )
