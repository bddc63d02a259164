"""A user's new order and what placing it made (the node's public values)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mixhouse.otc.orders import (
    OrderId,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NewOrder:
    """A user's order before it is signed.

    Attributes:
        pair: ``BASE/QUOTE``.
        side: ``buy`` or ``sell`` (the BASE asset).
        quantity: BASE base units.
        price: QUOTE base units per whole BASE coin.
        tif: ``GTC``, ``IOC``, ``FOK`` or ``POST_ONLY``.
        min_fill: 0 or the smallest fill accepted (base units), as taker and as maker.
        good_till_ms: optional time (ms) after which the owner stops offering it.
    """

    pair: str
    side: str
    quantity: int
    price: int
    tif: str = "GTC"
    min_fill: int = 0
    good_till_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Fill:
    """One fill of a taker order, as the taker's node recorded it.

    Attributes:
        trade_id: the trade's id.
        maker_order_id: the resting order filled.
        quantity: BASE base units.
        price: QUOTE base units per whole BASE coin (the maker's price).
        quote_amount: QUOTE base units (rounded down, :func:`~mixhouse.otc.matching.quote_amount`).
        maker_node: the maker's node id.
    """

    trade_id: str
    maker_order_id: str
    quantity: int
    price: int
    quote_amount: int
    maker_node: str


@dataclass(frozen=True, slots=True)
class PlaceResult:
    """The outcome of placing an order: its id, state, open quantity and the fills it made.

    ``pending`` counts base units asked of makers that have not answered yet (they may still
    be granted: the node keeps asking).
    """

    order_id: OrderId
    state: str
    remaining: int
    pending: int
    fills: list[Fill]
