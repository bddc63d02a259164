"""The OTC node's own HTTP API (FastAPI, OpenAPI at ``/docs`` and ``/openapi.json``).

A user talks to their own node only: place, cancel and list its orders, read the network's
book for a pair as this node holds it, its trades, the node's identity. Amounts are decimal
strings of base units (quantity: BASE base units; price: QUOTE base units per whole BASE
coin). Errors are RFC 9457 problems (``application/problem+json``, ``{type, title, status,
detail, instance}``), as the main API's: 422 invalid input (unknown pair, off-tick price, zero
amount..., and request validation with ``errors``), 404 unknown order, 409 an order no longer
open, 400 a body that does not parse, a NUL in the path or query or JSON nested too deep, 413
a body above 64 KiB (the last three by :mod:`mixhouse.http_guard`, as on the main API). The
main API's handlers are not reused: ``mixhouse.api`` imports the mixer, which the OTC feature
must not.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Row
from starlette.exceptions import HTTPException
from starlette.types import Scope

from mixhouse.errors import IllegalTransition, InvalidInput, NotFound
from mixhouse.http_guard import Refusal, RequestGuardMiddleware
from mixhouse.otc.node import NewOrder, OrderNotFound, OtcNode
from mixhouse.otc.orders import OrderId
from mixhouse.otc.pairs import PAIRS
from mixhouse.otc.swaps.engine import swap_rows

Digits = Annotated[str, Field(pattern=r"^[0-9]{1,40}$", examples=["50000000"])]


class OrderIn(BaseModel):
    """A new limit order."""

    model_config = ConfigDict(extra="forbid")

    pair: Annotated[str, Field(max_length=16, examples=["BTC/USDT"])]
    side: Literal["buy", "sell"]
    quantity: Digits = Field(description="BASE base units (satoshi for BTC)")
    price: Digits = Field(description="QUOTE base units per one whole BASE coin")
    tif: Literal["GTC", "IOC", "FOK", "POST_ONLY"] = "GTC"
    min_fill: Digits = "0"
    good_till_ms: Annotated[int | None, Field(ge=0, le=2**53 - 1)] = None


class FillOut(BaseModel):
    """One fill of a placed order."""

    trade_id: str
    maker_order_id: str
    quantity: str
    price: str
    quote_amount: str
    maker_node: str


class PlacedOut(BaseModel):
    """The outcome of a placement."""

    order_id: str
    state: str
    remaining: str
    pending: str = Field(description="asked of makers, not answered yet")
    fills: list[FillOut]


class OrderOut(BaseModel):
    """An order as this node holds it."""

    id: str
    owner: str
    mine: bool
    pair: str
    side: str
    quantity: str
    price: str
    remaining: str = Field(description="open quantity others may take (own orders: minus pending)")
    pending: str = Field(description="own orders: asked of makers by takes not answered yet")
    state: str
    tif: str
    min_fill: str
    created_at_ms: int
    expires_at_ms: int
    version: int


class BookOut(BaseModel):
    """The book of one pair as this node holds it: bids and asks, best first."""

    pair: str
    bids: list[OrderOut]
    asks: list[OrderOut]


class TradeOut(BaseModel):
    """One trade (a fill) as this node recorded it."""

    id: str
    role: str
    pair: str
    taker_side: str
    price: str
    quantity: str
    quote_amount: str
    maker_order_id: str
    taker_order_id: str
    maker_node: str
    taker_node: str
    state: str
    peer_confirmed: bool
    confirm_acked: bool
    agreed_at_ms: int
    # The state of the trade's atomic swap on this node (issue 10: locked, lock_confirmed,
    # claimed, completed, refunded...), or None while no swap settles it.
    settlement: str | None = None


class NodeOut(BaseModel):
    """Who this node is."""

    node_id: str
    address: str
    peers: list[str]
    pairs: list[str]


def order_out(row: Row[Any]) -> OrderOut:
    """The API form of an ``otc_orders`` row (an own order shows what others may take)."""
    remaining = row.remaining - row.reserved if row.mine else row.remaining
    return OrderOut(
        id=row.id,
        owner=row.owner,
        mine=row.mine,
        pair=row.pair,
        side=row.side,
        quantity=str(row.quantity),
        price=str(row.price),
        remaining=str(remaining),
        pending=str(row.reserved if row.mine else 0),
        state=row.state,
        tif=row.tif,
        min_fill=str(row.min_fill),
        created_at_ms=row.created_at_ms,
        expires_at_ms=row.expires_at_ms,
        version=row.version,
    )


def trade_out(row: Row[Any], settlement: str | None = None) -> TradeOut:
    """The API form of an ``otc_trades`` row, with the state of its swap (``settlement``)."""
    return TradeOut(
        settlement=settlement,
        id=row.id,
        role=row.role,
        pair=row.pair,
        taker_side=row.taker_side,
        price=str(row.price),
        quantity=str(row.quantity),
        quote_amount=str(row.quote_amount),
        maker_order_id=row.maker_order_id,
        taker_order_id=row.taker_order_id,
        maker_node=row.maker_node,
        taker_node=row.taker_node,
        state=row.state,
        peer_confirmed=row.peer_confirmed,
        confirm_acked=row.confirm_acked,
        agreed_at_ms=row.agreed_at_ms,
    )


_PROBLEMS: list[tuple[type[Exception], int, str]] = [
    (InvalidInput, 422, "invalid-input"),
    (NotFound, 404, "not-found"),
    (IllegalTransition, 409, "conflict"),
]


def _problem(request: Request, status: int, kind: str, detail: str, **extra: Any) -> JSONResponse:
    body = {
        "type": f"urn:mixhouse:problem:{kind}",
        "title": kind.replace("-", " "),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def _install_problems(app: FastAPI) -> None:
    for exc_type, status, kind in _PROBLEMS:

        async def handler(request: Request, exc: Exception, status: int = status, kind: str = kind) -> JSONResponse:
            return _problem(request, status, kind, str(exc))

        app.add_exception_handler(exc_type, handler)

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return _problem(request, 422, "validation", "the request does not validate", errors=errors)

    app.add_exception_handler(RequestValidationError, validation)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's own refusals (a body that does not parse, e.g. JSON nested too deep; an
        # unknown path or method) are problems too, not FastAPI's {"detail"} shape.
        assert isinstance(exc, HTTPException)
        return _problem(request, exc.status_code, "http", str(exc.detail))

    app.add_exception_handler(HTTPException, http_error)


MAX_BODY_BYTES = 64 * 1024  # the largest request body the node's API reads, bytes


def _guard_refusal(refusal: Refusal, scope: Scope) -> JSONResponse:
    body = {
        "type": f"urn:mixhouse:problem:{refusal.slug}",
        "title": refusal.title,
        "status": refusal.status,
        "detail": refusal.detail,
        "instance": str(scope.get("path", "")),
    }
    return JSONResponse(body, status_code=refusal.status, media_type="application/problem+json")


def create_app(node: OtcNode) -> FastAPI:
    """The HTTP API of ``node``."""
    app = FastAPI(title="Mixhouse OTC node", version="1", description=__doc__)
    _install_problems(app)
    # The request guard shared with the main API (NUL in path or query, body size, JSON depth),
    # the only middleware, so nothing reads the body before it; an order is under 1 KiB.
    app.add_middleware(RequestGuardMiddleware, respond=_guard_refusal, max_body_bytes=MAX_BODY_BYTES)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the node answers."""
        return {"status": "ok"}

    @app.get("/node")
    async def info() -> NodeOut:
        """This node's id (its public key), Grenache address and the peers it sees."""
        return NodeOut(
            node_id=node.node_id, address=node.address, peers=await node.transport.peers(), pairs=sorted(PAIRS)
        )

    @app.post("/orders", status_code=201)
    async def place(order: OrderIn) -> PlacedOut:
        """Sign and place a limit order; answers once its takes are done, with its fills."""
        result = await node.place(
            NewOrder(
                pair=order.pair,
                side=order.side,
                quantity=int(order.quantity),
                price=int(order.price),
                tif=order.tif,
                min_fill=int(order.min_fill),
                good_till_ms=order.good_till_ms,
            )
        )
        return PlacedOut(
            order_id=result.order_id,
            state=result.state,
            remaining=str(result.remaining),
            pending=str(result.pending),
            fills=[
                FillOut(
                    trade_id=f.trade_id,
                    maker_order_id=f.maker_order_id,
                    quantity=str(f.quantity),
                    price=str(f.price),
                    quote_amount=str(f.quote_amount),
                    maker_node=f.maker_node,
                )
                for f in result.fills
            ],
        )

    @app.get("/orders")
    async def orders(state: Annotated[Literal["open", "cancelled", "filled"] | None, Query()] = None) -> list[OrderOut]:
        """This node's own orders, newest first."""
        return [order_out(r) for r in await node.own(None if state is None else [state])]

    @app.get("/orders/{order_id}")
    async def get_order(order_id: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]) -> OrderOut:
        """One own order."""
        for row in await node.own():
            if row.id == order_id:
                return order_out(row)
        raise OrderNotFound(f"no own order {order_id[:16]}")

    @app.delete("/orders/{order_id}")
    async def cancel(order_id: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]) -> OrderOut:
        """Cancel an own order (409 if a take filled it first)."""
        await node.cancel(order_id)
        return await get_order(order_id)

    @app.get("/book")
    async def book(pair: Annotated[str, Query(max_length=16, examples=["BTC/USDT"])]) -> BookOut:
        """The open orders of ``pair`` known to this node (the whole network's, once synced)."""
        rows = await node.book(pair)
        return BookOut(
            pair=pair,
            bids=[order_out(r) for r in rows if r.side == "buy"],
            asks=[order_out(r) for r in rows if r.side == "sell"],
        )

    @app.get("/trades")
    async def trades(order_id: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None) -> list[TradeOut]:
        """This node's trades (of one order, or all), oldest first, each with the state of the
        atomic swap that settles it (``settlement``)."""
        rows = await node.trades(None if order_id is None else OrderId(order_id))
        settled = {s["trade_id"]: s["state"] for s in await swap_rows(node.engine)}
        return [trade_out(r, settled.get(r.id)) for r in rows]

    @app.get("/swaps")
    async def swaps(trade_id: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None) -> list[dict[str, Any]]:
        """The atomic swap of each trade (issue 10): role, state, txids by step, both timeouts
        (Bitcoin height / unix seconds) and the last error, oldest first; never the secret."""
        return await swap_rows(node.engine, trade_id=trade_id)

    return app
