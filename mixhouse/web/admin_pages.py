"""The admin dashboard: ``/admin`` behind an operator login (session cookie, CSRF-protected
forms), updated live by server-sent events (``/admin/events``).

It shows, per asset, the pool's books against the chain at the last reconciliation and
whether payouts are paused; mixes by state; frozen and held deposits with their reasons; the
newest audit entries, with a button that recomputes the audit log's hash chain. It reads
through the admin API's own functions (:mod:`mixhouse.api.routes_admin`). Its two actions,
refunding a held deposit and acknowledging a reconciliation mismatch, call the same functions
as the admin API (:mod:`mixhouse.mixer.refunds`, :mod:`mixhouse.mixer.acknowledgements`).
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import func, select, text

from mixhouse import audit
from mixhouse.api import RuntimeDep
from mixhouse.api.routes_admin import MAX_ID, list_deposits
from mixhouse.api.routes_admin import pool as pool_report
from mixhouse.api.schemas import AuditEntryOut, RefundOut
from mixhouse.db.tables import audit_log, mixes, sends
from mixhouse.errors import AuditChainBroken, IllegalTransition, InvalidInput, MixhouseError, NotFound
from mixhouse.mixer.acknowledgements import acknowledge
from mixhouse.mixer.refunds import request_refund
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.states import DepositState
from mixhouse.money import Asset, asset_info, format_amount
from mixhouse.web.operators import Session, login, logout, session_for
from mixhouse.web.sse import change_stream, sse_response
from mixhouse.web.templating import PAGE_HEADERS, render, render_fragment

router = APIRouter(prefix="/admin", include_in_schema=False)

COOKIE = "mh_admin"
DASHBOARD_POLL_SECONDS = 1.0
AUDIT_SHOWN = 30


async def _session(rt: Runtime, request: Request) -> Session | None:
    return await session_for(rt.engine, request.cookies.get(COOKIE))


def _to_login() -> RedirectResponse:
    return RedirectResponse("/admin/login", status_code=303, headers=PAGE_HEADERS)


def _csrf_ok(session: Session, given: str | None) -> bool:
    return secrets.compare_digest((given or "").encode(), session.csrf_token.encode())


def _lag_unit(asset: str) -> str:
    """What a scan's lag counts: blocks, or transfers on Jobcoin (a ledger without blocks,
    whose height is its highest transfer id)."""
    return "transfers" if asset == Asset.JOBCOIN.value else "blocks"


async def dashboard_context(rt: Runtime) -> dict[str, Any]:
    """What the dashboard shows, read now: pools, mixes by state, deposits needing the
    operator, payouts due within the hour, the newest audit entries, chain scans, live
    workers and wallet sync status."""
    pools = (await pool_report(rt)).pools
    flagged = (
        await list_deposits(
            rt,
            state=[DepositState.FROZEN, DepositState.HELD, DepositState.REFUNDING, DepositState.REFUNDED],
            asset=None,
            limit=100,
            after=None,
        )
    ).items
    async with rt.engine.connect() as conn:
        by_state = [
            (str(r[0]), str(r[1]), int(r[2]))
            for r in await conn.execute(
                select(mixes.c.asset, mixes.c.state, func.count()).group_by(mixes.c.asset, mixes.c.state)
            )
        ]
        entries = [
            AuditEntryOut.from_row(dict(r._mapping))
            for r in await conn.execute(select(audit_log).order_by(audit_log.c.id.desc()).limit(AUDIT_SHOWN))
        ]
        # Health: each chain scan's last progress and how far behind the tip its last scan was,
        # live workers, wallet sync by status (the same figures as /metrics; ages on the
        # database's clock, floored at 0; lag None where the adapter cannot tell).
        scans = [
            (str(r[0]), int(r[1]), None if r[2] is None else int(r[2]), _lag_unit(str(r[0])))
            for r in await conn.execute(
                text(
                    "SELECT asset, greatest(extract(epoch FROM now() - updated_at), 0)::bigint, "
                    "greatest(tip_height - scanned_height, 0) FROM chain_cursors ORDER BY asset"
                )
            )
        ]
        workers = int(
            (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM procrastinate_workers "
                        "WHERE last_heartbeat > now() - make_interval(secs => :stalled)"
                    ),
                    {"stalled": rt.settings.worker_stalled_after_seconds},
                )
            ).scalar_one()
        )
        wallet_sync = [
            (str(r[0]), str(r[1]), int(r[2]))
            for r in await conn.execute(
                text("SELECT chain, status, count(*) FROM wallet_addresses GROUP BY chain, status ORDER BY 1, 2")
            )
        ]
        refunded_ids = [d.id for d in flagged if d.state in (DepositState.REFUNDING, DepositState.REFUNDED)]
        refunds = {
            int(r.deposit_id): RefundOut.from_row(dict(r._mapping))
            for r in (
                await conn.execute(select(sends).where(sends.c.kind == "refund", sends.c.deposit_id.in_(refunded_ids)))
                if refunded_ids
                else []
            )
        }
        due_soon = [
            (str(r[0]), int(r[1]), format_amount(int(r[2]), asset_info(str(r[0])).decimals))
            for r in await conn.execute(
                text(
                    "SELECT asset, count(*), coalesce(sum(amount), 0) FROM sends WHERE kind = 'payout' "
                    "AND state = 'scheduled' AND due_at < now() + interval '1 hour' GROUP BY asset ORDER BY asset"
                )
            )
        ]
    return {
        "due_soon": due_soon,
        "pools": pools,
        "by_state": sorted(by_state),
        "flagged": flagged,
        "refunds": refunds,
        "entries": entries,
        "scans": scans,
        "workers": workers,
        "wallet_sync": wallet_sync,
    }


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> HTMLResponse:
    """The login form."""
    return render(request, "admin_login.html", {"error": None})


@router.post("/login", response_model=None)
async def login_submit(
    request: Request,
    rt: RuntimeDep,
    name: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
) -> Response:
    """Check the credentials; on success set the session cookie and go to the dashboard.

    A wrong name or password is the same 401 page (not told apart).
    """
    token = await login(rt.engine, name, password, lifetime_seconds=rt.settings.admin_session_seconds)
    if token is None:
        return render(request, "admin_login.html", {"error": "wrong name or password"}, status_code=401)
    response = RedirectResponse("/admin", status_code=303, headers=PAGE_HEADERS)
    response.set_cookie(
        COOKIE,
        token,
        max_age=rt.settings.admin_session_seconds,
        httponly=True,
        samesite="strict",
        secure=rt.settings.environment == "production",
        path="/admin",
    )
    return response


@router.post("/logout", response_model=None)
async def logout_submit(request: Request, rt: RuntimeDep, csrf_token: Annotated[str, Form()] = "") -> Response:
    """End the session (CSRF-checked) and go back to the login form."""
    session = await _session(rt, request)
    if session is None:
        return _to_login()
    if not _csrf_ok(session, csrf_token):
        return render(request, "admin_refused.html", {"reason": "missing or wrong CSRF token"}, status_code=403)
    await logout(rt.engine, request.cookies.get(COOKIE, ""))
    response = _to_login()
    response.delete_cookie(COOKIE, path="/admin")
    return response


@router.get("", response_class=HTMLResponse, response_model=None)
async def dashboard(request: Request, rt: RuntimeDep) -> Response:
    """The dashboard (303 to the login form without a live session)."""
    session = await _session(rt, request)
    if session is None:
        return _to_login()
    context = await dashboard_context(rt)
    context.update({"session": session, "verified": None, "notice": None})
    return render(request, "admin.html", context)


@router.post("/audit/verify", response_class=HTMLResponse, response_model=None)
async def audit_verify(request: Request, rt: RuntimeDep, csrf_token: Annotated[str, Form()] = "") -> Response:
    """Recompute the audit log's hash chain (CSRF-checked form); the dashboard shows the result."""
    session = await _session(rt, request)
    if session is None:
        return _to_login()
    if not _csrf_ok(session, csrf_token):
        return render(request, "admin_refused.html", {"reason": "missing or wrong CSRF token"}, status_code=403)
    try:
        async with rt.engine.begin() as conn:
            count = await audit.verify(conn)
        verified: dict[str, Any] = {"ok": True, "detail": f"{count} sealed entries verified"}
    except AuditChainBroken as exc:
        verified = {"ok": False, "detail": str(exc)}
    context = await dashboard_context(rt)
    context.update({"session": session, "verified": verified, "notice": None})
    return render(request, "admin.html", context)


@router.get("/events", response_model=None)
async def dashboard_events(request: Request, rt: RuntimeDep) -> Response | StreamingResponse:
    """Server-sent events: ``dashboard`` with the dashboard's live block whenever it changes."""
    session = await _session(rt, request)
    if session is None:
        return Response(status_code=401)

    async def snapshot() -> str:
        # The live block holds the action forms: they carry this session's CSRF token.
        return render_fragment("_admin_live.html", {**await dashboard_context(rt), "session": session})

    return sse_response(change_stream(request, snapshot, event="dashboard", interval=DASHBOARD_POLL_SECONDS))


def _status_of(exc: MixhouseError) -> int:
    """The HTTP status the admin API answers for ``exc`` (mixhouse.api.problems' mapping)."""
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, IllegalTransition):
        return 409
    if isinstance(exc, InvalidInput):
        return 422
    return 502  # ChainError: the fee quote failed


async def _with_notice(
    request: Request, rt: Runtime, session: Session, notice: dict[str, Any], *, status: int
) -> Response:
    context = await dashboard_context(rt)
    context.update({"session": session, "verified": None, "notice": notice})
    return render(request, "admin.html", context, status_code=status)


@router.post("/deposits/{deposit_id}/refund", response_class=HTMLResponse, response_model=None)
async def refund_submit(
    request: Request,
    rt: RuntimeDep,
    deposit_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    csrf_token: Annotated[str, Form()] = "",
    address: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """Refund a held deposit to ``address`` (CSRF-checked form): the admin API's own
    :func:`~mixhouse.mixer.refunds.request_refund`, so a double submit still makes one refund
    (the second answers the first). The dashboard shows the outcome."""
    session = await _session(rt, request)
    if session is None:
        return _to_login()
    if not _csrf_ok(session, csrf_token):
        return render(request, "admin_refused.html", {"reason": "missing or wrong CSRF token"}, status_code=403)
    try:
        outcome = await request_refund(rt, deposit_id=deposit_id, address=address, operator=session.operator)
    except MixhouseError as exc:
        notice = {"ok": False, "detail": f"Refund of deposit {deposit_id} refused: {exc}"}
        return await _with_notice(request, rt, session, notice, status=_status_of(exc))
    to = outcome.send["to_address"]
    detail = (
        f"Refund of deposit {deposit_id} to {to} scheduled."
        if outcome.created
        else f"Deposit {deposit_id} is already {outcome.deposit_state} to {to}: nothing more was sent."
    )
    return await _with_notice(
        request, rt, session, {"ok": True, "detail": detail}, status=202 if outcome.created else 200
    )


@router.post("/reconciliations/{asset}/acknowledge", response_class=HTMLResponse, response_model=None)
async def acknowledge_submit(
    request: Request,
    rt: RuntimeDep,
    *,
    asset: str,
    csrf_token: Annotated[str, Form()] = "",
    reason: Annotated[str, Form(max_length=2000)] = "",
    expected: Annotated[str, Form(max_length=80)] = "",
    actual: Annotated[str, Form(max_length=80)] = "",
) -> Response:
    """Acknowledge the reconciliation mismatch the operator saw (CSRF-checked form, the figures
    shown come back as ``expected``/``actual``); payouts resume while it stays the same."""
    session = await _session(rt, request)
    if session is None:
        return _to_login()
    if not _csrf_ok(session, csrf_token):
        return render(request, "admin_refused.html", {"reason": "missing or wrong CSRF token"}, status_code=403)
    try:
        ack = await acknowledge(
            rt,
            asset=asset,
            operator=session.operator,
            reason=reason,
            expected=int(expected) if expected.lstrip("-").isdigit() else None,
            actual=int(actual) if actual.lstrip("-").isdigit() else None,
        )
    except MixhouseError as exc:
        notice = {"ok": False, "detail": f"Acknowledgement of {asset} refused: {exc}"}
        return await _with_notice(request, rt, session, notice, status=_status_of(exc))
    detail = f"{asset} mismatch acknowledged (#{ack.id}): payouts resume while the discrepancy stays the same."
    return await _with_notice(request, rt, session, {"ok": True, "detail": detail}, status=201 if ack.created else 200)
