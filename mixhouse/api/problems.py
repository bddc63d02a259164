"""Every error the HTTP API answers, as an RFC 9457 problem (``application/problem+json``).

This module is the one place that maps exceptions to HTTP statuses:

==========================================  ======  =====================================
exception                                   status  ``type``
==========================================  ======  =====================================
:class:`~mixhouse.errors.InvalidAddress`     422    ``urn:mixhouse:problem:invalid-address``
:class:`~mixhouse.errors.InvalidAmount`      422    ``urn:mixhouse:problem:invalid-amount``
:class:`~mixhouse.errors.InvalidInput`       422    ``urn:mixhouse:problem:invalid-input``
:class:`~mixhouse.errors.NotFound`           404    ``urn:mixhouse:problem:not-found``
:class:`~mixhouse.errors.IllegalTransition`  409    ``urn:mixhouse:problem:conflict``
:class:`~mixhouse.errors.PayoutsPaused`      503    ``urn:mixhouse:problem:payouts-paused``
:class:`~mixhouse.errors.KeysExhausted`      503    ``urn:mixhouse:problem:keys-exhausted``
:class:`~mixhouse.errors.KeysBusy`           503    ``urn:mixhouse:problem:keys-busy``
:class:`~mixhouse.errors.ChainError`         502    ``urn:mixhouse:problem:chain-unavailable``
:class:`~mixhouse.errors.RateLimited`        429    ``urn:mixhouse:problem:rate-limited``
:class:`~mixhouse.errors.OpenMixesCapped`    429    ``urn:mixhouse:problem:too-many-open-mixes``
database unreachable (connection failures)   503    ``urn:mixhouse:problem:database-unavailable``
a value the database refuses (``DataError``)  422    ``urn:mixhouse:problem:invalid-input``
a NUL character in the path or query         400    ``urn:mixhouse:problem:nul-character``
a body over the size limit                   413    ``urn:mixhouse:problem:body-too-large``
a body nested too deeply                     400    ``urn:mixhouse:problem:json-too-deep``
request body is not JSON                     400    ``urn:mixhouse:problem:malformed-json``
FastAPI ``RequestValidationError``           422    ``urn:mixhouse:problem:validation``
Starlette/FastAPI ``HTTPException``          its    ``about:blank``
anything else                                500    ``urn:mixhouse:problem:internal``
==========================================  ======  =====================================

A body is ``{"type", "title", "status", "detail", "instance"}`` plus, for validation errors,
``errors: [{"loc": [...], "msg": str, "type": str}]`` and, for a 500, ``error_id`` (a UUID
that is logged with the traceback; the body carries nothing else about the failure).
``instance`` is the request path. Chain errors are logged in full but answered with a fixed
detail, since node messages can name internal URLs. A 503 for the database carries
``Retry-After``, and so do a 503 ``keys-busy`` and a 429 (whole seconds, repeated as ``retry_after_seconds`` in the
body); a 405 lists in ``Allow`` every method served on the path, not only those of
the first route that matched. The three refusals of :mod:`mixhouse.http_guard` (NUL, size,
depth) are answered before routing, by :func:`guard_refusal`. Logged paths go through
:func:`mixhouse.logs.redact_path`, so no mix id reaches the log.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import psycopg
import sqlalchemy.exc
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mixhouse.api.schemas import Problem
from mixhouse.errors import (
    ChainError,
    IllegalTransition,
    InvalidAddress,
    InvalidAmount,
    InvalidInput,
    KeysBusy,
    KeysExhausted,
    MixhouseError,
    NotFound,
    OpenMixesCapped,
    PayoutsPaused,
    RateLimited,
)
from mixhouse.http_guard import Refusal, allow_header
from mixhouse.logs import redact_path

log = structlog.get_logger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_PREFIX = "urn:mixhouse:problem:"
# Validation messages quoted in ``detail`` (all of them are in ``errors``).
_DETAIL_ERRORS = 3


class ProblemResponse(JSONResponse):
    """A JSON response with the ``application/problem+json`` media type."""

    media_type = PROBLEM_MEDIA_TYPE


@dataclass(frozen=True, slots=True)
class _Kind:
    status: int
    slug: str
    title: str


# Most specific first is not needed: the lookup walks the exception's MRO.
_DOMAIN_KINDS: dict[type[MixhouseError], _Kind] = {
    InvalidAddress: _Kind(422, "invalid-address", "Invalid address"),
    InvalidAmount: _Kind(422, "invalid-amount", "Invalid amount"),
    InvalidInput: _Kind(422, "invalid-input", "Invalid input"),
    NotFound: _Kind(404, "not-found", "Not found"),
    IllegalTransition: _Kind(409, "conflict", "Conflict"),
    PayoutsPaused: _Kind(503, "payouts-paused", "Payouts paused"),
    KeysExhausted: _Kind(503, "keys-exhausted", "No deposit addresses left"),
    KeysBusy: _Kind(503, "keys-busy", "Deposit addresses unavailable"),
    ChainError: _Kind(502, "chain-unavailable", "Chain unavailable"),
    RateLimited: _Kind(429, "rate-limited", "Too many requests"),
    OpenMixesCapped: _Kind(429, "too-many-open-mixes", "Too many open mixes"),
}

_CHAIN_DETAIL = "a blockchain node or ledger failed or answered something unusable; try again later"
_DATABASE_DETAIL = "the database is unreachable; try again later"
_DATA_DETAIL = "a value in the request is out of range or holds characters the database cannot store"
# Seconds a client should wait before retrying while the database is unreachable.
_DATABASE_RETRY_AFTER = "5"


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    type_: str = "about:blank",
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> ProblemResponse:
    """Build a problem response.

    Args:
        status: the HTTP status code, repeated in the body.
        title: a short summary of the problem type (the same for every occurrence).
        detail: what went wrong this time, for a human; never internals.
        type_: a URI naming the problem type (``about:blank`` for plain HTTP statuses).
        instance: the request path the problem occurred on.
        headers: extra response headers (``WWW-Authenticate``, ``Allow``...).
        extensions: extension members (``errors``, ``error_id``), JSON-serialisable.

    Returns:
        A ``ProblemResponse`` with media type ``application/problem+json``.
    """
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail}
    if instance is not None:
        body["instance"] = instance
    body.update(extensions)
    return ProblemResponse(body, status_code=status, headers=headers)


def _kind_of(exc: MixhouseError) -> _Kind | None:
    for cls in type(exc).__mro__:
        kind = _DOMAIN_KINDS.get(cls)
        if kind is not None:
            return kind
    return None


async def _mixhouse_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, MixhouseError)
    kind = _kind_of(exc)
    if kind is None:
        # ConfigError, InsufficientFunds, AuditChainBroken...: not the client's business.
        return unhandled_problem(request, exc)
    detail = str(exc) or kind.title
    if isinstance(exc, ChainError):
        log.warning(
            "chain error answered 502", path=redact_path(request.url.path), error=str(exc), kind=type(exc).__name__
        )
        detail = _CHAIN_DETAIL
    if isinstance(exc, RateLimited | KeysBusy):
        return problem(
            kind.status,
            kind.title,
            detail,
            type_=_TYPE_PREFIX + kind.slug,
            instance=request.url.path,
            headers={"Retry-After": str(exc.retry_after_seconds)},
            retry_after_seconds=exc.retry_after_seconds,
        )
    return problem(kind.status, kind.title, detail, type_=_TYPE_PREFIX + kind.slug, instance=request.url.path)


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """The validation errors without ``input`` and ``ctx`` (they echo the request and may
    hold objects that are not JSON)."""
    return [
        {
            "loc": [part if isinstance(part, int) else str(part) for part in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in exc.errors()
    ]


async def _validation_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _field_errors(exc)
    if any(err["type"] == "json_invalid" for err in errors):
        return problem(
            400,
            "Malformed JSON",
            "the request body is not valid JSON",
            type_=_TYPE_PREFIX + "malformed-json",
            instance=request.url.path,
        )
    quoted = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in errors[:_DETAIL_ERRORS])
    more = f" (and {len(errors) - _DETAIL_ERRORS} more)" if len(errors) > _DETAIL_ERRORS else ""
    return problem(
        422,
        "Invalid request",
        f"{len(errors)} validation error(s): {quoted}{more}",
        type_=_TYPE_PREFIX + "validation",
        instance=request.url.path,
        errors=errors,
    )


async def _http_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    try:
        title = HTTPStatus(exc.status_code).phrase
    except ValueError:
        title = "Error"
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail else title
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers.update(allow_header(request))
    return problem(exc.status_code, title, detail, instance=request.url.path, headers=headers)


def _database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached (connection refused or lost, pool
    exhausted, server shutting down), as opposed to a failed statement."""
    if isinstance(exc, sqlalchemy.exc.TimeoutError | psycopg.OperationalError | psycopg.InterfaceError):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError
        )
    return False


async def _database_error(request: Request, exc: Exception) -> ProblemResponse:
    path = redact_path(request.url.path)
    if _database_unavailable(exc):
        # The message names the server, not the request: safe to log, useless to the client.
        log.warning("database unavailable answered 503", path=path, kind=type(exc).__name__, error=str(exc))
        return problem(
            503,
            "Database unavailable",
            _DATABASE_DETAIL,
            type_=_TYPE_PREFIX + "database-unavailable",
            instance=request.url.path,
            headers={"Retry-After": _DATABASE_RETRY_AFTER},
        )
    if isinstance(exc, sqlalchemy.exc.DataError | psycopg.DataError):
        # A value the routes let through but PostgreSQL refuses (a NUL in a text, a number
        # out of a column's range): the client's input, and the transaction rolled back.
        log.warning("database refused a value; answered 422", path=path, kind=type(exc).__name__)
        return problem(
            422, "Invalid input", _DATA_DETAIL, type_=_TYPE_PREFIX + "invalid-input", instance=request.url.path
        )
    return unhandled_problem(request, exc)


def unhandled_problem(request: Request, exc: BaseException) -> ProblemResponse:
    """Log ``exc`` with its traceback under a fresh ``error_id`` and answer an opaque 500.

    Returns:
        A 500 problem whose body holds the ``error_id`` and nothing about the failure.
    """
    error_id = str(uuid.uuid4())
    log.error(
        "unhandled exception",
        error_id=error_id,
        method=request.method,
        path=redact_path(request.url.path),
        exc_info=exc,
    )
    return problem(
        500,
        "Internal Server Error",
        "an unexpected error occurred; quote the error_id to the operator",
        type_=_TYPE_PREFIX + "internal",
        instance=request.url.path,
        error_id=error_id,
    )


async def _unhandled(request: Request, exc: Exception) -> ProblemResponse:
    return unhandled_problem(request, exc)


class CatchAllMiddleware:
    """Answer any exception that escapes the routes with :func:`unhandled_problem`.

    Starlette hands ``Exception`` handlers to its outermost middleware, which re-raises after
    answering (so the server logs the traceback a second time and test transports raise);
    this middleware answers and swallows instead. An exception after the response started
    cannot be answered and is re-raised.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; on an exception before the response started, send a 500 problem."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            request = Request(scope)
            response = (
                await _database_error(request, exc)
                if isinstance(exc, _DATABASE_ERRORS)
                else unhandled_problem(request, exc)
            )
            await response(scope, receive, send)


# What _database_error sorts out (503, 422, or an ordinary 500).
_DATABASE_ERRORS = (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.TimeoutError, psycopg.Error)


def guard_refusal(refusal: Refusal, scope: Scope) -> ProblemResponse:
    """The problem answering a refusal of :class:`mixhouse.http_guard.RequestGuardMiddleware`."""
    return problem(
        refusal.status,
        refusal.title,
        refusal.detail,
        type_=_TYPE_PREFIX + refusal.slug,
        instance=str(scope.get("path", "")),
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Register every exception handler of this module (and the catch-all) on ``app``."""
    app.add_exception_handler(MixhouseError, _mixhouse_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for error_class in _DATABASE_ERRORS:
        app.add_exception_handler(error_class, _database_error)
    app.add_exception_handler(Exception, _unhandled)
    app.add_middleware(CatchAllMiddleware)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem answers with these statuses."""
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
