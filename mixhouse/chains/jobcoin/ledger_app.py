"""The local Jobcoin ledger over HTTP, speaking the original Jobcoin API.

Routes (amounts are decimal strings in whole jobcoins, at most 8 decimals):

* ``GET /api/addresses/{address}`` -> ``{"balance": "49.5", "transactions": [...]}``; an
  unused address is ``{"balance": "0", "transactions": []}``, never a 404.
* ``GET /api/transactions`` -> every transaction, oldest first.
* ``POST /api/transactions`` with ``fromAddress``, ``toAddress``, ``amount`` ->
  ``{"status": "OK"}``; too poor a sender -> 422 ``{"error": "Insufficient Funds"}``.
* ``POST /api/mint`` with ``address`` and optional ``amount`` (default ``"50"``) ->
  ``{"status": "OK"}`` (the original's "create 50 coins" page).
* ``GET /`` -> a small HTML page with a mint form and a send form.

A transaction item is ``{"timestamp": "2021-12-17T00:52:39.092Z", "fromAddress": "Alice",
"toAddress": "Bob", "amount": "49.5"}``; minted coins have no ``fromAddress`` key.

POST bodies may be JSON, ``application/x-www-form-urlencoded`` or ``multipart/form-data``.
Every refusal is ``{"error": "<message>"}``: 400 for an unreadable body (malformed JSON,
broken multipart), 415 for another content type, 422 for bad or missing fields and for
insufficient funds. A refused request changes nothing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from mixhouse.chains.jobcoin import ledger
from mixhouse.errors import InsufficientFunds, InvalidAddress, InvalidInput
from mixhouse.money import ASSETS, Asset, format_amount, parse_amount

DECIMALS = ASSETS[Asset.JOBCOIN].decimals
DEFAULT_MINT_AMOUNT = "50"

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class _UnreadableBody(InvalidInput):
    """The body could not be parsed at all (answered 400, not 422)."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


def _error(status_code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code)


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


async def _read_body(request: Request) -> dict[str, Any]:
    """The request's fields, from a JSON object or a form (values not yet type-checked)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
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


def _text_field(fields: dict[str, Any], name: str, *, default: str | None = None) -> str:
    if name not in fields:
        if default is not None:
            return default
        raise InvalidInput(f"{name} is missing")
    value = fields[name]
    if not isinstance(value, str):
        if name == "amount":
            raise InvalidInput('amount must be a decimal string such as "49.5"')
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
    text = _text_field(fields, "amount", default=default)
    # Stricter than parse_amount, which strips: the wire format has no room for padding.
    if text != text.strip():
        raise InvalidInput(f"amount {text!r} has surrounding whitespace")
    return parse_amount(text, DECIMALS)


_INDEX_HTML = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Jobcoin ledger (local)</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}
fieldset{margin-bottom:1em}label{display:block;margin:.3em 0}</style></head>
<body>
<h1>Jobcoin ledger</h1>
<p>A local development ledger. API: <code>GET /api/addresses/&lt;address&gt;</code>,
<a href="api/transactions"><code>GET /api/transactions</code></a>,
<code>POST /api/transactions</code>, <code>POST /api/mint</code>.</p>
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


def create_ledger_app(engine: AsyncEngine) -> FastAPI:
    """The Jobcoin HTTP API (see the module docstring) over the ledger in ``engine``'s database.

    The app never creates tables: the database must already be migrated.
    """
    app = FastAPI(title="Jobcoin ledger (local)", docs_url=None, redoc_url=None, openapi_url=None)
    # Balance and history are read in two statements; one snapshot keeps them consistent.
    read_engine = engine.execution_options(isolation_level="REPEATABLE READ")

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
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(_INDEX_HTML)

    # ``:path`` so that names containing "/" (sent percent-encoded) still reach us.
    @app.get("/api/addresses/{address:path}")
    async def get_address(address: str) -> dict[str, Any]:
        ledger.validate_address(address)
        async with read_engine.begin() as conn:
            balance, transfers = await ledger.address_info(conn, address)
        return {
            "balance": format_amount(balance, DECIMALS),
            "transactions": [_transaction_json(item) for item in transfers],
        }

    @app.get("/api/transactions")
    async def list_transactions() -> list[dict[str, str]]:
        async with engine.connect() as conn:
            transfers = await ledger.all_transfers(conn)
        return [_transaction_json(item) for item in transfers]

    @app.post("/api/transactions")
    async def send(request: Request) -> dict[str, str]:
        fields = await _read_body(request)
        from_address = _address_field(fields, "fromAddress")
        to_address = _address_field(fields, "toAddress")
        amount = _amount_field(fields)
        await ledger.transfer(engine, from_address, to_address, amount)
        return {"status": "OK"}

    @app.post("/api/mint")
    async def mint(request: Request) -> dict[str, str]:
        fields = await _read_body(request)
        address = _address_field(fields, "address")
        amount = _amount_field(fields, default=DEFAULT_MINT_AMOUNT)
        await ledger.mint(engine, address, amount)
        return {"status": "OK"}

    return app


def ledger_server(engine: AsyncEngine, host: str, port: int, *, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server for the ledger app, not yet started.

    Run it with ``await server.serve()``; stop it from another task by setting
    ``server.should_exit = True`` (``server.started`` turns true once it listens).
    """
    config = uvicorn.Config(create_ledger_app(engine), host=host, port=port, log_level=log_level)
    return uvicorn.Server(config)


async def serve_ledger(engine: AsyncEngine, host: str, port: int) -> None:
    """Serve the ledger on ``host:port`` until the process is interrupted (Ctrl-C)."""
    await ledger_server(engine, host, port).serve()
