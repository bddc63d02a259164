"""The engine's order record and its enums."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

NEVER_MS = 2**63 - 1
"""``expires_at_ms`` of an order that does not expire (the largest BIGINT)."""


class Side(enum.StrEnum):
    """The side of the BASE asset the order's owner takes: BUY base (pays quote) or SELL base."""

    BUY = "buy"
    SELL = "sell"


class TimeInForce(enum.StrEnum):
    """What happens to the part of an order that does not trade at once.

    * ``GTC``: good till cancelled (or expired): the remainder rests in the book.
    * ``IOC``: immediate or cancel: trades what it can now, the remainder is cancelled.
    * ``FOK``: fill or kill: trades its whole quantity now, or nothing at all (rejected).
    * ``POST_ONLY``: never takes; rejected if it would cross the book, otherwise rests.
    """

    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"
    POST_ONLY = "post_only"


class OrderStatus(enum.StrEnum):
    """An order's state in the engine. Only ``OPEN`` orders are in the book.

    ``NEW`` (not yet submitted) -> ``OPEN`` (resting, maybe partly filled) -> ``FILLED`` |
    ``CANCELLED`` (by its owner, IOC remainder, self-trade prevention, a remainder that would
    rest crossed) | ``EXPIRED``; ``NEW`` -> ``REJECTED`` (a post-only that would take, a FOK that
    cannot fill completely; nothing traded).
    """

    NEW = "new"
    OPEN = "open"
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REJECTED = "rejected"


class SelfTradePrevention(enum.StrEnum):
    """What the engine does when an order meets a resting order of the same owner.

    * ``CANCEL_RESTING`` (default): the owner's resting order is cancelled (its newest intent
      wins) and the incoming order goes on matching against the orders behind it.
    * ``CANCEL_TAKER``: the incoming order stops there; its remainder is cancelled (fills made
      before it stay).

    Either way the owner never trades with itself and no remainder rests crossed.
    """

    CANCEL_RESTING = "cancel_resting"
    CANCEL_TAKER = "cancel_taker"


@dataclass(slots=True, eq=False)
class Order:
    """One limit order as the engine holds it. The engine owns it once submitted or added and
    updates its ``remaining``, ``filled``, ``cancelled`` and ``status``.

    Attributes:
        id: the order's id (the node's ``OrderId``, hex of a hash of its signed content);
            priority ties on ``created_ms`` are broken by it (smaller first).
        owner: who placed it (the owner node's identity); same owner never trades with itself.
        side: buy or sell the BASE asset.
        price: limit price, QUOTE base units per one whole BASE (``10**base_decimals`` units).
        quantity: placed quantity, BASE base units (satoshi for BTC).
        created_ms: creation time signed by the owner, Unix ms; time priority within a price.
        expires_at_ms: Unix ms from which the order is expired and never filled
            (``NEVER_MS``: no expiry).
        tif: time in force.
        min_fill: 0 or the smallest fill this order accepts, as taker and as maker, except when
            what is left of it is smaller (then only all of that).
        remaining: open quantity (resting, or still to match).
        filled: quantity traded so far.
        cancelled: quantity withdrawn (cancel, IOC/FOK remainder, expiry, STP, rejection).
            Always ``filled + remaining + cancelled == quantity``.
        status: see ``OrderStatus``.
    """

    id: str
    owner: str
    side: Side
    price: int
    quantity: int
    created_ms: int
    expires_at_ms: int = NEVER_MS
    tif: TimeInForce = TimeInForce.GTC
    min_fill: int = 0
    remaining: int = field(default=-1)
    filled: int = 0
    cancelled: int = 0
    status: OrderStatus = OrderStatus.NEW

    def __post_init__(self) -> None:
        if self.remaining == -1:
            self.remaining = self.quantity
