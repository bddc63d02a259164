"""Operator routes under ``/api/v1/admin``, behind the ``X-API-Key`` header.

The key is compared in constant time with ``settings.admin_api_key``; a missing or wrong key
is a 401 problem. ``/privacy`` runs the privacy analyzer over the live pool
(:mod:`mixhouse.mixer.privacy.live`). Lists are newest first with keyset pagination: each
page carries ``next_after``, passed back as ``?after=`` (opaque for mixes, an id for deposits and audit).
An id cursor is ``1..2**63-1`` (PostgreSQL ``bigint``); anything else is a 422 problem, as is
a mix cursor that was not made by :func:`encode_mix_cursor`.

Two actions move state: ``POST /deposits/{id}/refund`` refunds a held deposit
(:mod:`mixhouse.mixer.refunds`) and ``POST /reconciliations/{asset}/acknowledge`` acknowledges a
reconciliation mismatch so that payouts resume (:mod:`mixhouse.mixer.acknowledgements`). The
dashboard's forms call the same functions.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, Security
from fastapi.security import APIKeyHeader
from sqlalchemy import and_, case, exists, func, select, tuple_

from mixhouse.api import RuntimeDep
from mixhouse.api.problems import problem_responses
from mixhouse.api.schemas import (
    AcknowledgementCreate,
    AcknowledgementOut,
    AdminDepositOut,
    AdminDepositPage,
    AdminMixOut,
    AdminMixPage,
    AuditEntryOut,
    AuditPage,
    PoolOut,
    PoolReport,
    PrivacyReportOut,
    RefundCreate,
    RefundOut,
    RefundRequestOut,
)
from mixhouse.chains.base import UtxoChainAdapter
from mixhouse.db.tables import audit_log, deposits, mixes, reconciliations, sends, utxos
from mixhouse.errors import InvalidInput
from mixhouse.mixer.acknowledgements import Acknowledgement, acknowledge
from mixhouse.mixer.pool_rotation import generations
from mixhouse.mixer.privacy.live import MAX_HOURS, MAX_PAYOUTS, MIN_HOURS, privacy_report
from mixhouse.mixer.reconcile import pool_move_fees
from mixhouse.mixer.refunds import RefundRequest, request_refund
from mixhouse.mixer.states import DepositState, MixState, SendState

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The operator's key (MIXHOUSE_ADMIN_API_KEY).")


async def require_admin(rt: RuntimeDep, key: Annotated[str | None, Security(_api_key)]) -> None:
    """Let the request through only with the right ``X-API-Key``.

    Raises:
        HTTPException: 401 when the header is missing or wrong (or no key is configured).
    """
    expected = rt.settings.admin_api_key.get_secret_value().encode()
    given = (key or "").encode()
    if not expected or not secrets.compare_digest(given, expected):
        raise HTTPException(
            status_code=401,
            detail="a valid X-API-Key header is required",
            headers={"WWW-Authenticate": 'ApiKey header="X-API-Key"'},
        )


router = APIRouter(
    prefix="/api/v1/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=problem_responses(400, 401, 422, 500, 503),
)

Limit = Annotated[int, Query(ge=1, le=500, description="Page size, 1..500.")]
# Ids are bigint: a larger cursor would reach PostgreSQL as an out-of-range value (a 500).
MAX_ID = 2**63 - 1
IdCursor = Annotated[int | None, Query(ge=1, le=MAX_ID, description="next_after of the previous page (1..2**63-1).")]


def encode_mix_cursor(created_at: datetime, mix_id: str) -> str:
    """The opaque ``after`` token of the mix listed last on a page."""
    raw = f"{created_at.isoformat()}|{mix_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_mix_cursor(token: str) -> tuple[datetime, str]:
    """``(created_at, id)`` of an ``after`` token.

    Raises:
        InvalidInput: the token was not made by :func:`encode_mix_cursor`.
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        moment_text, mix_id = raw.split("|", 1)
        moment = datetime.fromisoformat(moment_text)
    except (ValueError, binascii.Error) as exc:
        raise InvalidInput("the after cursor is malformed") from exc
    # A mix id is URL-safe base64 text; a NUL or other control character could only make the
    # query fail (PostgreSQL text holds no NUL).
    if moment.tzinfo is None or not mix_id or not mix_id.isprintable():
        raise InvalidInput("the after cursor is malformed")
    return moment, mix_id


def _status_url(request: Request, mix_id: str) -> str:
    return str(request.app.url_path_for("get_mix_status", mix_id=mix_id))


@router.get("/mixes", summary="List mixes")
async def list_mixes(
    rt: RuntimeDep,
    request: Request,
    state: Annotated[list[MixState] | None, Query(description="Repeatable filter.")] = None,
    limit: Limit = 100,
    after: Annotated[str | None, Query(max_length=512, description="The previous page's next_after.")] = None,
) -> AdminMixPage:
    """Mixes, newest first (by ``created_at``, then ``id``), optionally of some states."""
    stmt = select(mixes)
    if state:
        stmt = stmt.where(mixes.c.state.in_([s.value for s in state]))
    if after is not None:
        moment, mix_id = decode_mix_cursor(after)
        stmt = stmt.where(tuple_(mixes.c.created_at, mixes.c.id) < tuple_(moment, mix_id))
    stmt = stmt.order_by(mixes.c.created_at.desc(), mixes.c.id.desc()).limit(limit + 1)
    async with rt.engine.connect() as conn:
        rows = [dict(r._mapping) for r in (await conn.execute(stmt)).all()]
    page, more = rows[:limit], len(rows) > limit
    items = [AdminMixOut.from_admin_row(r, _status_url(request, r["id"])) for r in page]
    next_after = encode_mix_cursor(page[-1]["created_at"], page[-1]["id"]) if more else None
    return AdminMixPage(items=items, next_after=next_after)


@router.get("/deposits", summary="List deposits")
async def list_deposits(
    rt: RuntimeDep,
    state: Annotated[
        list[DepositState] | None,
        Query(description="Repeatable filter; ?state=frozen&state=held lists what needs the operator."),
    ] = None,
    asset: Annotated[str | None, Query(max_length=16)] = None,
    limit: Limit = 100,
    after: IdCursor = None,
) -> AdminDepositPage:
    """Deposits, newest first, with their mix id and, for frozen or held ones, the reason."""
    stmt = select(deposits)
    if state:
        stmt = stmt.where(deposits.c.state.in_([s.value for s in state]))
    if asset is not None:
        stmt = stmt.where(deposits.c.asset == asset)
    if after is not None:
        stmt = stmt.where(deposits.c.id < after)
    stmt = stmt.order_by(deposits.c.id.desc()).limit(limit + 1)
    async with rt.engine.connect() as conn:
        rows = [dict(r._mapping) for r in (await conn.execute(stmt)).all()]
    page, more = rows[:limit], len(rows) > limit
    return AdminDepositPage(
        items=[AdminDepositOut.from_admin_row(r) for r in page],
        next_after=int(page[-1]["id"]) if more else None,
    )


def _sum(condition: Any, value: Any) -> Any:
    return func.coalesce(func.sum(case((condition, value), else_=0)), 0)


@router.get("/pool", summary="Pool books and reconciliation")
async def pool(rt: RuntimeDep) -> PoolReport:
    """Per enabled asset: the pool's books, fees earned, payouts due, the last reconciliation.

    Read from the database only (no chain call): ``books`` is confirmed sweeps into the pool
    minus confirmed payouts and the network fees paid for them, over every pool key generation's
    address, less the fees of the moves between them (account chains), or the pool's unspent
    coins (UTXO chains); the chain's view is in the reconciliation, checked by the worker.
    """
    pools: list[PoolOut] = []
    async with rt.engine.connect() as conn:
        for asset, adapter in sorted(rt.adapters.items()):
            # After a key rotation (mixer/pool_rotation.py) the pool is every generation's
            # address, the active one first; this process's adapter may not have followed it.
            generation_rows = await generations(conn, asset.value)
            pool_address = next((g.address for g in generation_rows if g.state == "active"), adapter.pool_address)
            addresses = sorted({adapter.pool_address, *(g.address for g in generation_rows)})
            into_pool = and_(sends.c.kind == "sweep", sends.c.to_address.in_(addresses))
            out_of_pool = and_(sends.c.kind == "payout", sends.c.from_address.in_(addresses))
            confirmed = sends.c.state == SendState.CONFIRMED
            payout = sends.c.kind == "payout"
            scheduled = sends.c.state == SendState.SCHEDULED
            in_flight = sends.c.state.in_([SendState.SIGNED, SendState.BROADCAST])
            sums = (
                await conn.execute(
                    select(
                        _sum(and_(into_pool, confirmed), sends.c.amount).label("credits"),
                        _sum(
                            and_(out_of_pool, confirmed),
                            sends.c.amount + func.coalesce(sends.c.network_fee_paid, 0),
                        ).label("debits"),
                        _sum(and_(payout, scheduled), sends.c.amount).label("scheduled"),
                        _sum(and_(payout, in_flight), sends.c.amount).label("in_flight"),
                    ).where(sends.c.asset == asset.value)
                )
            ).one()
            fees = (
                await conn.execute(
                    select(func.coalesce(func.sum(deposits.c.fee_amount), 0)).where(
                        deposits.c.asset == asset.value, deposits.c.state == DepositState.POOLED
                    )
                )
            ).scalar_one()
            if not isinstance(adapter, UtxoChainAdapter):
                # A move between generations costs its fee in the asset (a token's gas move: none).
                moves_paid, _, _ = await pool_move_fees(conn, asset)
                books = int(sums.credits) - int(sums.debits) - moves_paid
            else:
                # A UTXO pool's books are its coins: deposits, top-ups and change not yet spent;
                # not a held deposit's output its refund spends (it never joined the pool).
                refunding = exists().where(sends.c.id == utxos.c.reserved_by_send, sends.c.kind == "refund")
                books = int(
                    (
                        await conn.execute(
                            select(func.coalesce(func.sum(utxos.c.amount), 0)).where(
                                utxos.c.asset == asset.value, utxos.c.state != "spent", ~refunding
                            )
                        )
                    ).scalar_one()
                )
            recon = (await conn.execute(select(reconciliations).where(reconciliations.c.asset == asset.value))).first()
            pools.append(
                PoolOut.build(
                    asset=asset.value,
                    pool_address=pool_address,
                    books=books,
                    fees_earned=int(fees),
                    scheduled_payouts=int(sums.scheduled),
                    in_flight_payouts=int(sums.in_flight),
                    reconciliation=None if recon is None else dict(recon._mapping),
                )
            )
    return PoolReport(pools=pools)


@router.get("/privacy", summary="Privacy of the live pool")
async def privacy(
    rt: RuntimeDep,
    asset: Annotated[
        str, Query(max_length=16, description="An enabled asset, exactly: JOBCOIN, ETH or BTC.")
    ] = "JOBCOIN",
    hours: Annotated[
        int,
        Query(ge=MIN_HOURS, le=MAX_HOURS, description=f"Range of payout times: the last {MIN_HOURS}..{MAX_HOURS} h."),
    ] = 24,
) -> PrivacyReportOut:
    """Mixhouse's own chain-analysis attacks run over the public record of one asset's pool
    (pooled deposits and confirmed payouts of the last ``hours`` hours), scored against the
    links the operator knows: per attack, the withdrawal addresses linked (percent), the
    precision and the anonymity-set percentiles; the release gate's anonymity sets at release
    and why each deposit was released; the deposits it holds now. At most the newest
    ``payout_limit`` (5,000) payouts are analysed (``payouts_capped`` says when the range had
    more). The analysis runs in a thread, one at a time per process; at the cap it takes up to a
    minute or two.

    Errors: 422 an unknown or disabled asset, ``hours`` outside 1..720; 401 without the key.
    """
    live = await privacy_report(rt, asset, hours=hours, payout_limit=MAX_PAYOUTS)
    return PrivacyReportOut.from_live(live)


@router.get("/audit", summary="Read the audit log")
async def audit(
    rt: RuntimeDep,
    entity_type: Annotated[str | None, Query(max_length=64, description="mix, deposit, send...")] = None,
    entity_id: Annotated[str | None, Query(max_length=256)] = None,
    limit: Limit = 100,
    after: IdCursor = None,
) -> AuditPage:
    """Audit entries, newest (highest id) first, optionally of one entity; hashes in hex.

    Pages by ``id``, the write order, rather than by ``seq``: entries not sealed yet have no
    ``seq`` (nor hashes) but are listed all the same.
    """
    stmt = select(audit_log)
    if entity_type is not None:
        stmt = stmt.where(audit_log.c.entity_type == entity_type)
    if entity_id is not None:
        stmt = stmt.where(audit_log.c.entity_id == entity_id)
    if after is not None:
        stmt = stmt.where(audit_log.c.id < after)
    stmt = stmt.order_by(audit_log.c.id.desc()).limit(limit + 1)
    async with rt.engine.connect() as conn:
        rows = [dict(r._mapping) for r in (await conn.execute(stmt)).all()]
    page, more = rows[:limit], len(rows) > limit
    return AuditPage(
        items=[AuditEntryOut.from_row(r) for r in page],
        next_after=int(page[-1]["id"]) if more else None,
    )


API_KEY_OPERATOR = "api key"


def refund_answer(outcome: RefundRequest) -> RefundRequestOut:
    """The body of a refund request's answer (shared with the dashboard)."""
    return RefundRequestOut(
        created=outcome.created, deposit_state=outcome.deposit_state, refund=RefundOut.from_row(outcome.send)
    )


def acknowledgement_answer(ack: Acknowledgement) -> AcknowledgementOut:
    """The body of an acknowledgement's answer."""
    return AcknowledgementOut(
        id=ack.id,
        asset=ack.asset,
        expected=str(ack.expected),
        actual=str(ack.actual),
        low=str(ack.low),
        high=str(ack.high),
        discrepancy_low=str(ack.discrepancy_low),
        discrepancy_high=str(ack.discrepancy_high),
        operator=ack.operator,
        reason=ack.reason,
        created_at=ack.created_at,
        created=ack.created,
    )


@router.post(
    "/deposits/{deposit_id}/refund",
    summary="Refund a held deposit",
    status_code=202,
    responses={
        200: {"model": RefundRequestOut, "description": "The refund already existed (same address): here it is."},
        **problem_responses(404, 409, 502),
    },
)
async def refund_deposit(
    rt: RuntimeDep,
    response: Response,
    deposit_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    body: RefundCreate,
) -> RefundRequestOut:
    """Refund held deposit ``deposit_id`` to ``address``, exactly once: a send from the deposit
    address for the deposit's amount minus the network fee (ETH gas; Jobcoin none), through the
    same send state machine as every payout. On Bitcoin the refund spends the deposit's own
    output alone (one output, no change; the miner fee at the current fee rate).

    202 with the new refund; 200 with the existing one when the deposit is already being (or
    was) refunded to the same address (a double click, a retry, two operators). Errors: 404 no
    such deposit; 409 frozen (sanctions: frozen funds are never refunded), not held, or already
    refunding to another address (a refund is never redirected); 422 a malformed address, the
    pool's or a deposit address, or a deposit too small to pay the refund's network fee; 502 the
    node failed the fee quote (nothing changed).
    """
    outcome = await request_refund(
        rt, deposit_id=deposit_id, address=body.address, operator=body.operator or API_KEY_OPERATOR
    )
    if not outcome.created:
        response.status_code = 200
    return refund_answer(outcome)


@router.post(
    "/reconciliations/{asset}/acknowledge",
    summary="Acknowledge a reconciliation mismatch (resume payouts)",
    status_code=201,
    responses={
        200: {"model": AcknowledgementOut, "description": "This mismatch was already acknowledged: here it is."},
        **problem_responses(404, 409),
    },
)
async def acknowledge_mismatch(
    rt: RuntimeDep,
    response: Response,
    asset: Annotated[str, Path(max_length=16, description="JOBCOIN, ETH or BTC, exactly.")],
    body: AcknowledgementCreate,
) -> AcknowledgementOut:
    """Acknowledge the current reconciliation mismatch of ``asset`` with a written reason;
    payouts of the asset resume at once and keep flowing while later checks show the same
    discrepancy (chain minus books); a different mismatch pauses them again.

    201 with the new acknowledgement; 200 with the existing one if this mismatch was already
    acknowledged. Errors: 404 never reconciled; 409 the last check agrees, or its figures are
    not the ``expected``/``actual`` given (it changed since they were read); 422 an asset not
    enabled, an empty reason.
    """
    ack = await acknowledge(
        rt,
        asset=asset,
        operator=body.operator or API_KEY_OPERATOR,
        reason=body.reason,
        expected=None if body.expected is None else int(body.expected),
        actual=None if body.actual is None else int(body.actual),
    )
    if not ack.created:
        response.status_code = 200
    return acknowledgement_answer(ack)
