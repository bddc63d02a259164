"""What the engine reports: fills, the outcome of a submit, and a take plan."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from mixhouse.otc.matching.orders import Order, Side


class Reason(enum.StrEnum):
    """Why (part of) an incoming order did not trade or rest.

    * ``POST_ONLY_WOULD_TAKE``: a post-only order crossed the book: rejected, nothing changed.
    * ``FOK_NOT_FILLABLE``: a fill-or-kill order could not fill completely: rejected, nothing
      changed (not even the self-trade cancels it would have caused).
    * ``IOC_REMAINDER``: what an IOC order could not fill at once was cancelled.
    * ``SELF_TRADE``: with ``CANCEL_TAKER`` the order met its owner's resting order; its
      remainder was cancelled.
    * ``WOULD_REST_CROSSED``: the remainder of a GTC order still crossed resting orders it could
      not trade with (minimum fills) and was cancelled: the book never rests crossed.
    """

    POST_ONLY_WOULD_TAKE = "post_only_would_take"
    FOK_NOT_FILLABLE = "fok_not_fillable"
    IOC_REMAINDER = "ioc_remainder"
    SELF_TRADE = "self_trade"
    WOULD_REST_CROSSED = "would_rest_crossed"


@dataclass(slots=True)
class Fill:
    """One trade between a resting (maker) order and an incoming (taker) order. Read-only by
    convention (not frozen: a frozen dataclass costs five times as much to build).

    Attributes:
        maker_id: the resting order's id.
        taker_id: the incoming order's id.
        maker_owner: the resting order's owner.
        taker_owner: the incoming order's owner.
        taker_side: the taker's side (``BUY``: the taker bought base and paid quote).
        price: the maker's price, quote base units per whole base asset.
        quantity: base units traded (a positive multiple of the pair's lot).
        quote_amount: quote base units paid by the buyer to the seller
            (``quote_amount(quantity, price, base_decimals)``: rounded down, always >= 1).
        maker_remaining: the maker's remaining quantity after this fill.
    """

    maker_id: str
    taker_id: str
    maker_owner: str
    taker_owner: str
    taker_side: Side
    price: int
    quantity: int
    quote_amount: int
    maker_remaining: int


@dataclass(slots=True)
class Execution:
    """The outcome of ``MatchingEngine.submit``.

    Attributes:
        order: the incoming order, updated (status ``OPEN`` if its remainder rests).
        fills: the trades it made, in priority order.
        reason: why part or all of it was cancelled or rejected (None: it filled or rests).
        self_trade_cancelled: resting orders of the same owner cancelled by self-trade
            prevention (``CANCEL_RESTING``).
        expired: orders the engine expired at ``now_ms`` before matching.
    """

    order: Order
    fills: Sequence[Fill]
    reason: Reason | None
    self_trade_cancelled: Sequence[Order]
    expired: Sequence[Order]


@dataclass(frozen=True, slots=True)
class PlannedFill:
    """One resting order an incoming order would trade with, and how much.

    Attributes:
        maker: the resting order (the engine's record: read it, do not change it).
        quantity: base units the taker would fill from it.
        price: the maker's price.
    """

    maker: Order
    quantity: int
    price: int


@dataclass(frozen=True, slots=True)
class TakePlan:
    """What an incoming order would do, computed without changing anything.

    Attributes:
        fills: the resting orders it would cross, in priority order, with quantities.
        self_trades: resting orders of the same owner it met: with ``CANCEL_RESTING`` those
            ``submit`` would cancel; with ``CANCEL_TAKER`` the one it would stop at.
        stopped_by_self_trade: ``CANCEL_TAKER`` stopped the walk at ``self_trades[-1]``.
        quantity: sum of ``fills`` quantities, base units.
        complete: the fills cover all of the order's remaining quantity (a FOK would execute).
        blocked: the order crosses the book but ``submit`` would not trade it (post-only).
    """

    fills: list[PlannedFill]
    self_trades: list[Order]
    stopped_by_self_trade: bool
    quantity: int
    complete: bool
    blocked: bool = False
