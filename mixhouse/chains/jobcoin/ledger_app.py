"""The local Jobcoin ledger over HTTP, speaking the original Jobcoin API.

Routes (amounts are written as decimal strings in whole jobcoins, at most 8 decimals):

* ``GET /api/addresses/{address}`` -> ``{"balance": "49.5", "transactions": [...]}``; an
  unused address is ``{"balance": "0", "transactions": []}``, never a 404.
* ``GET /api/transactions`` -> every transaction, oldest first. Our extension:
  ``?after=<id>&limit=<n>`` -> the next page after a cursor, each item with its ``id`` (see
  :func:`mixhouse.chains.jobcoin.ledger.transfers_after`); without ``after``, the original answer.
  With ``after`` and ``&wait_ms=<n>`` (at most 30,000) a long poll: when nothing follows the
  cursor yet the answer waits up to ``n`` ms for a transfer, and carries ``X-Jobcoin-Waited``.
* ``POST /api/transactions`` and ``POST /send`` (the original's own route) with
  ``fromAddress``, ``toAddress``, ``amount`` -> ``{"status": "OK"}``; too poor a sender ->
  422 ``{"error": "Insufficient Funds"}``.
* ``POST /api/transactions/batch`` (our extension) with ``{"transactions": [...]}`` -> one
  ``{"status": "OK"}`` or ``{"error": ...}`` per transfer, in order, all in one transaction.
* ``POST /api/incoming`` (our extension) with ``{"addresses": [...]}`` (1 to 1,000) ->
  ``{"incoming": {"<address>": [...]}}``: each address's received transfers, oldest first, each
  with its ``id``, all read in one snapshot (scanners read many paid addresses in one request).
* ``POST /api/mint`` and ``POST /create`` (the original's "create 50 coins" form) with
  ``address`` and optional ``amount`` (default ``"50"``) -> ``{"status": "OK"}``.
* ``GET /`` -> a small HTML page with a mint form and a send form.
* ``GET /openapi.json`` and ``GET /docs``: the OpenAPI description of the routes above.

A transaction item is ``{"timestamp": "2021-12-17T00:52:39.092Z", "fromAddress": "Alice",
"toAddress": "Bob", "amount": "49.5"}``; minted coins have no ``fromAddress`` key.

POST bodies may be JSON, ``application/x-www-form-urlencoded`` or ``multipart/form-data``.
``amount`` is a decimal string (``"49.5"``, exponent form ``"1E-7"`` too) or, in JSON, a
number (``37``, ``49.5``, read exactly, never through a float). More than 8 decimals are
rounded down to 8 (:func:`mixhouse.chains.jobcoin.ledger.parse_wire_amount` says why);
an amount that rounds down to zero is refused.

Every refusal is ``{"error": "<message>"}``: 400 for an unreadable body (malformed JSON,
broken multipart, nested deeper than the limit, a NUL in the path or query), 413 for a
body over the size limit (:mod:`mixhouse.http_guard`, checked before the body is parsed),
415 for another content type, 422 for bad or missing fields (zero, negative or malformed
amounts, empty or invalid addresses) and for insufficient funds, 503 while the database is
unreachable. A refused request changes nothing.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, NoReturn

import sqlalchemy.exc
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.types import Scope

from mixhouse.chains.jobcoin import ledger
from mixhouse.errors import InsufficientFunds, InvalidAddress, InvalidInput
from mixhouse.http_guard import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_JSON_DEPTH,
    Refusal,
    RequestGuardMiddleware,
    allow_header,
)
from mixhouse.logs import uvicorn_log_config
from mixhouse.money import Asset, asset_info, format_amount
from mixhouse.recursion import pin_recursion_limit

DECIMALS = asset_info(Asset.JOBCOIN).decimals
DEFAULT_MINT_AMOUNT = "50"

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class _UnreadableBody(InvalidInput):
    """The body could not be parsed at all (answered 400, not 422)."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


# -- OpenAPI models (documentation only: the routes read their bodies themselves, since a
# body may be JSON or a form and the original's messages must be kept) ----------------------


class StatusOK(BaseModel):
    """A write that happened."""

    status: Literal["OK"]


class LedgerError(BaseModel):
    """Any refusal; nothing changed."""

    error: str = Field(examples=["Insufficient Funds"])


class TransactionOut(BaseModel):
    """One transfer; ``fromAddress`` is absent for minted coins."""

    id: int | None = Field(default=None, description="Only with `after` (our extension).")
    timestamp: str = Field(examples=["2021-12-17T00:52:39.092Z"])
    fromAddress: str | None = None  # noqa: N815 - the original's field name
    toAddress: str  # noqa: N815
    amount: str = Field(examples=["49.5"])


class AddressOut(BaseModel):
    """An address's balance and history, oldest first."""

    balance: str = Field(examples=["49.5"])
    transactions: list[TransactionOut]


_MAX_ID = 2**63 - 1
_LIST_PARAMETERS = {
    "parameters": [
        {
            "name": "after",
            "in": "query",
            "required": False,
            "description": "Cursor (our extension): only transfers with a larger `id`, each with its `id`; "
            "no transfer with a smaller id than the last one returned can appear later.",
            "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": "Page size with `after`.",
            "schema": {"type": "integer", "minimum": 1, "maximum": ledger.MAX_PAGE, "default": 1000},
        },
        {
            "name": "wait_ms",
            "in": "query",
            "required": False,
            "description": "Long poll with `after` (our extension): when no transfer follows the cursor yet, wait "
            "up to this many milliseconds for one before answering (the page may still be empty). The answer "
            "then carries the header `X-Jobcoin-Waited` (milliseconds waited).",
            "schema": {"type": "integer", "minimum": 0, "maximum": ledger.MAX_WAIT_MS, "default": 0},
        },
    ]
}
_ADDRESS_SCHEMA = {"type": "string", "minLength": 1, "maxLength": ledger.MAX_ADDRESS_LENGTH}
_AMOUNT_SCHEMA = {
    "description": "Whole jobcoins: a decimal string or (JSON only) a number; rounded down to 8 decimals.",
    "anyOf": [
        {"type": "string", "pattern": r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$", "examples": ["49.5"]},
        {"type": "number", "exclusiveMinimum": 0},
    ],
}


def _request_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """An OpenAPI ``requestBody`` accepting the same object as JSON or as a form."""
    schema = {"type": "object", "properties": properties, "required": required}
    form_properties = {name: ({"type": "string"} if name == "amount" else value) for name, value in properties.items()}
    form_schema = {"type": "object", "properties": form_properties, "required": required}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": form_schema},
                "multipart/form-data": {"schema": form_schema},
            },
        }
    }


MAX_BATCH = 1000
_SEND_BODY_SCHEMA = {
    "type": "object",
    "properties": {"fromAddress": _ADDRESS_SCHEMA, "toAddress": _ADDRESS_SCHEMA, "amount": _AMOUNT_SCHEMA},
    "required": ["fromAddress", "toAddress", "amount"],
}
_SEND_BODY = _request_body(
    {"fromAddress": _ADDRESS_SCHEMA, "toAddress": _ADDRESS_SCHEMA, "amount": _AMOUNT_SCHEMA},
    ["fromAddress", "toAddress", "amount"],
)
_MINT_BODY = _request_body({"address": _ADDRESS_SCHEMA, "amount": _AMOUNT_SCHEMA}, ["address"])
_WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": StatusOK, "description": "Done."},
    400: {"model": LedgerError, "description": "Unreadable body (malformed JSON or form, nested too deeply)."},
    413: {"model": LedgerError, "description": "Body over the size limit."},
    415: {"model": LedgerError, "description": "Not JSON nor a form."},
    422: {"model": LedgerError, "description": "Bad or missing field, or Insufficient Funds."},
    503: {"model": LedgerError, "description": "Database unreachable."},
}
_READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": LedgerError, "description": "A NUL character in the path."},
    503: {"model": LedgerError, "description": "Database unreachable."},
}


def _query_int(request: Request, name: str, *, default: int | None, maximum: int, minimum: int = 0) -> int | None:
    """An optional integer query parameter, read by hand so that a bad one is refused with the
    ledger's own ``{"error": ...}`` 422 body.

    Raises:
        InvalidInput: not a plain decimal integer in ``minimum..maximum``.
    """
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not minimum <= int(raw) <= maximum:
        raise InvalidInput(f"{name} must be an integer from {minimum} to {maximum}")
    return int(raw)


def _error(status_code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code)


def _guard_refusal(refusal: Refusal, _: Scope) -> JSONResponse:
    return _error(refusal.status, refusal.detail)


def _timestamp(moment: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and ``Z``, as the original API wrote them."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _transaction_json(item: ledger.LedgerTransfer) -> dict[str, str]:
    body = {"timestamp": _timestamp(item.created_at)}
    # Minted coins have no sender: the original API omits the key rather than sending null.
    if item.from_address is not None:
        body["fromAddress"] = item.from_address
    body["toAddress"] = item.to_address
    body["amount"] = format_amount(item.amount, DECIMALS)
    return body


def _no_constants(name: str) -> NoReturn:
    # NaN and Infinity are not JSON, though Python's parser reads them by default.
    raise ValueError(f"{name} is not valid JSON")


async def _read_body(request: Request) -> dict[str, Any]:
    """The request's fields, from a JSON object or a form (values not yet type-checked).

    JSON numbers are read as ``int`` or exact ``Decimal``, never ``float``.
    """
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        raw = await request.body()
        try:
            data = json.loads(raw, parse_float=Decimal, parse_constant=_no_constants)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            # RecursionError cannot happen behind the guard's depth limit; kept as a backstop.
            raise _UnreadableBody("the request body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise _UnreadableBody("the JSON body must be an object")
        return data
    if media_type in _FORM_TYPES:
        fields: dict[str, Any] = {}
        try:
            async with request.form() as form:
                for key in form:
                    values = form.getlist(key)
                    if len(values) != 1:
                        raise InvalidInput(f"{key} is given more than once")
                    value = values[0]
                    # A file part is not a field value; refuse it instead of stringifying it.
                    fields[key] = None if isinstance(value, UploadFile) else value
        except (MultiPartException, StarletteHTTPException) as exc:
            detail = exc.message if isinstance(exc, MultiPartException) else str(exc.detail)
            raise _UnreadableBody(f"the form body cannot be read: {detail}") from exc
        return fields
    raise _UnreadableBody(
        "send the fields as application/json, application/x-www-form-urlencoded or multipart/form-data",
        status_code=415,
    )


def _text_field(fields: dict[str, Any], name: str) -> str:
    if name not in fields:
        raise InvalidInput(f"{name} is missing")
    value = fields[name]
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    return value


def _address_field(fields: dict[str, Any], name: str) -> str:
    text = _text_field(fields, name)
    try:
        return ledger.validate_address(text)
    except InvalidAddress as exc:
        # Say which of the two addresses is wrong.
        raise InvalidAddress(f"{name}: {exc}") from exc


def _amount_field(fields: dict[str, Any], *, default: str | None = None) -> int:
    if "amount" not in fields:
        if default is None:
            raise InvalidInput("amount is missing")
        return ledger.parse_wire_amount(default, DECIMALS)
    return ledger.parse_wire_amount(fields["amount"], DECIMALS)


_INDEX_HTML = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Jobcoin ledger (local)</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}
fieldset{margin-bottom:1em}label{display:block;margin:.3em 0}</style></head>
<body>
<h1>Jobcoin ledger</h1>
<p>A local development ledger. API: <code>GET /api/addresses/&lt;address&gt;</code>,
<a href="api/transactions"><code>GET /api/transactions</code></a>,
<code>POST /api/transactions</code> (or <code>/send</code>), <code>POST /api/mint</code>
(or <code>/create</code>); <a href="docs">OpenAPI</a>.</p>
<form method="post" action="api/mint"><fieldset><legend>Create coins</legend>
<label>Address <input name="address" required maxlength="128"></label>
<label>Amount <input name="amount" value="50" required></label>
<button type="submit">Mint</button></fieldset></form>
<form method="post" action="api/transactions"><fieldset><legend>Send coins</legend>
<label>From <input name="fromAddress" required maxlength="128"></label>
<label>To <input name="toAddress" required maxlength="128"></label>
<label>Amount <input name="amount" required></label>
<button type="submit">Send</button></fieldset></form>
</body>
</html>
"""


def _engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


def create_ledger_app(
    engine: AsyncEngine,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> FastAPI:
    """The Jobcoin HTTP API (see the module docstring) over the ledger in ``engine``'s database.

    Args:
        engine: the ledger's database (kept in ``app.state.engine``; the caller disposes of it).
        max_body_bytes: larger bodies are refused with 413 before they are parsed.
        max_json_depth: non-form bodies nested deeper are refused with 400.

    The app never creates tables: the database must already be migrated.
    """
    pin_recursion_limit()
    app = FastAPI(
        title="Jobcoin ledger (local)",
        version="1",
        description=(
            "A local Jobcoin-compatible ledger. Amounts are decimal strings in whole jobcoins; "
            "the ledger keeps 8 decimals and rounds finer amounts down. Refusals are "
            '`{"error": "..."}` and change nothing.'
        ),
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.engine = engine
    app.add_middleware(
        RequestGuardMiddleware,
        respond=_guard_refusal,
        max_body_bytes=max_body_bytes,
        max_json_depth=max_json_depth,
    )

    @app.exception_handler(_UnreadableBody)
    async def _unreadable(_: Request, exc: _UnreadableBody) -> JSONResponse:
        return _error(exc.status_code, str(exc))

    @app.exception_handler(InvalidInput)
    async def _invalid(_: Request, exc: InvalidInput) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(InsufficientFunds)
    async def _insufficient(_: Request, __: InsufficientFunds) -> JSONResponse:
        # The exact body of the original API, which clients match on.
        return _error(422, "Insufficient Funds")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers.update(allow_header(request))
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=headers)

    async def _database_down(_: Request, __: Exception) -> JSONResponse:
        # A lost or refused connection is the server's state, not the request's: retry later.
        return JSONResponse(
            {"error": "the ledger database is unreachable; try again later"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    for error_class in (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.TimeoutError):
        app.add_exception_handler(error_class, _database_down)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(_INDEX_HTML)

    # ``:path`` so that names containing "/" (sent percent-encoded) still reach us.
    @app.get(
        "/api/addresses/{address:path}",
        response_model=None,
        responses={
            200: {"model": AddressOut, "description": "Balance and history."},
            422: {"model": LedgerError, "description": "Not a valid address."},
            **_READ_RESPONSES,
        },
    )
    async def get_address(address: str, request: Request) -> dict[str, Any]:
        """The balance and every transfer of ``address`` (an unused one has ``"0"`` and none)."""
        ledger.validate_address(address)
        # Balance and history are read in two statements; one snapshot keeps them consistent.
        read_engine = _engine(request).execution_options(isolation_level="REPEATABLE READ")
        async with read_engine.begin() as conn:
            balance, transfers = await ledger.address_info(conn, address)
        return {
            "balance": format_amount(balance, DECIMALS),
            "transactions": [_transaction_json(item) for item in transfers],
        }

    @app.get(
        "/api/transactions",
        response_model=None,
        responses={
            200: {"model": list[TransactionOut], "description": "Every transfer (with `after`: a page, with ids)."},
            422: {"model": LedgerError, "description": "A bad `after` or `limit`."},
            **_READ_RESPONSES,
        },
        openapi_extra=_LIST_PARAMETERS,
    )
    async def list_transactions(request: Request) -> list[dict[str, Any]] | JSONResponse:
        """Every transfer of the ledger, oldest first; with ``?after=<id>`` (and ``limit``, at
        most 10,000, default 1,000), one page of the transfers after that cursor, each with its
        ``id``: our extension, for scanners. The original has no cursor, and without ``after``
        the answer is exactly the original's."""
        after = _query_int(request, "after", default=None, maximum=_MAX_ID)
        limit = _query_int(request, "limit", default=1000, maximum=ledger.MAX_PAGE, minimum=1)
        wait_ms = _query_int(request, "wait_ms", default=0, maximum=ledger.MAX_WAIT_MS) or 0
        if after is None:
            async with _engine(request).connect() as conn:
                transfers = await ledger.all_transfers(conn)
            return [_transaction_json(item) for item in transfers]
        headers: dict[str, str] = {}
        if wait_ms:
            # A scanner's long poll: it learns of a new transfer as it commits instead of at its
            # next tick (a node's new-block subscription, for our development chain).
            started = time.monotonic()
            await ledger.wait_for_transfer(_engine(request), after, wait_ms / 1000)
            headers[ledger.WAITED_HEADER] = str(round((time.monotonic() - started) * 1000))
        page = await ledger.transfers_after(_engine(request), after, limit or 1000)
        return JSONResponse([{"id": item.id, **_transaction_json(item)} for item in page], headers=headers)

    async def send(request: Request) -> dict[str, str]:
        """Move ``amount`` from ``fromAddress`` to ``toAddress`` (422 ``Insufficient Funds``
        when the sender holds less; a send to oneself is refused)."""
        fields = await _read_body(request)
        from_address = _address_field(fields, "fromAddress")
        to_address = _address_field(fields, "toAddress")
        amount = _amount_field(fields)
        await ledger.transfer(_engine(request), from_address, to_address, amount)
        return {"status": "OK"}

    async def send_batch(request: Request) -> dict[str, list[dict[str, str]]]:
        """Our extension: ``{"transactions": [{fromAddress, toAddress, amount}, ...]}`` (at most
        1,000), each moved in order exactly as ``POST /api/transactions`` would, all in one
        statement (one transaction: a crash moves all or none); answers one
        ``{"status": "OK"}`` or ``{"error": ...}`` per item, in order. A body that is not such a
        list is refused whole (nothing moved)."""
        body = await _read_body(request)
        items = body.get("transactions")
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            raise InvalidInput(f"transactions must be a list of 1 to {MAX_BATCH} transfers")
        if not all(isinstance(item, dict) for item in items):
            raise InvalidInput("every transaction must be an object")
        results: list[dict[str, str] | None] = []
        valid: list[tuple[str, str, int]] = []
        for fields in items:
            try:
                transfer = ledger.check_transfer(
                    _address_field(fields, "fromAddress"), _address_field(fields, "toAddress"), _amount_field(fields)
                )
            except InvalidInput as exc:
                results.append({"error": str(exc)})
            else:
                results.append(None)
                valid.append(transfer)
        # The valid ones in one statement (one transaction), in order.
        moved = iter(await ledger.transfer_many(_engine(request), valid))
        answers = [
            result if result is not None else ({"status": "OK"} if next(moved) else {"error": "Insufficient Funds"})
            for result in results
        ]
        return {"results": answers}

    app.add_api_route(
        "/api/transactions/batch",
        send_batch,
        methods=["POST"],
        name="send_batch",
        response_model=None,
        responses=_WRITE_RESPONSES,
        openapi_extra=_request_body(
            {"transactions": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": _SEND_BODY_SCHEMA}},
            ["transactions"],
        ),
    )

    async def incoming(request: Request) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Our extension: ``{"addresses": [...]}`` (1 to 1,000 addresses) -> every transfer each
        received, oldest first, with its ``id``, in one snapshot: the n-th item of an address is
        its n-th incoming transfer, as in ``GET /api/addresses/{address}``."""
        body = await _read_body(request)
        addresses = body.get("addresses")
        if not isinstance(addresses, list) or not 1 <= len(addresses) <= MAX_BATCH:
            raise InvalidInput(f"addresses must be a list of 1 to {MAX_BATCH} addresses")
        if not all(isinstance(a, str) for a in addresses):
            raise InvalidInput("every address must be a string")
        async with _engine(request).connect() as conn:
            found = await ledger.incoming_of(conn, addresses)
        return {
            "incoming": {
                address: [{"id": item.id, **_transaction_json(item)} for item in items]
                for address, items in found.items()
            }
        }

    app.add_api_route(
        "/api/incoming",
        incoming,
        methods=["POST"],
        name="incoming",
        response_model=None,
        responses={
            200: {"description": "Per address, its received transfers with ids, oldest first."},
            422: {"model": LedgerError, "description": "Not a list of 1 to 1,000 valid addresses."},
            **_READ_RESPONSES,
        },
        openapi_extra=_request_body(
            {"addresses": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": _ADDRESS_SCHEMA}},
            ["addresses"],
        ),
    )

    async def mint(request: Request) -> dict[str, str]:
        """Create ``amount`` (default 50) new coins at ``address``."""
        fields = await _read_body(request)
        address = _address_field(fields, "address")
        amount = _amount_field(fields, default=DEFAULT_MINT_AMOUNT)
        await ledger.mint(_engine(request), address, amount)
        return {"status": "OK"}

    for path, endpoint, body, name in (
        ("/api/transactions", send, _SEND_BODY, "send"),
        ("/send", send, _SEND_BODY, "send_original"),
        ("/api/mint", mint, _MINT_BODY, "mint"),
        ("/create", mint, _MINT_BODY, "create_original"),
    ):
        app.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            name=name,
            response_model=None,
            responses=_WRITE_RESPONSES,
            openapi_extra=body,
        )

    return app


def ledger_server(
    engine: AsyncEngine,
    host: str,
    port: int,
    *,
    log_level: str = "info",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> uvicorn.Server:
    """A uvicorn server for the ledger app, not yet started (access log redacted).

    Run it with ``await server.serve()``; stop it from another task by setting
    ``server.should_exit = True`` (``server.started`` turns true once it listens).
    """
    app = create_ledger_app(engine, max_body_bytes=max_body_bytes, max_json_depth=max_json_depth)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, log_config=uvicorn_log_config())
    return uvicorn.Server(config)


async def serve_ledger(
    engine: AsyncEngine,
    host: str,
    port: int,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> None:
    """Serve the ledger on ``host:port`` until the process is interrupted (Ctrl-C)."""
    await ledger_server(engine, host, port, max_body_bytes=max_body_bytes, max_json_depth=max_json_depth).serve()
