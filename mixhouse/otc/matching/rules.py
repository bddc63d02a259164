"""A pair's trading rules as the engine reads them, and the checks made at submit.

The engine does not own the pair table (``mixhouse.otc.pairs`` does); it takes any object
with the attributes of ``PairRulesLike``, such as ``mixhouse.otc.pairs.PairRules``.
"""

from __future__ import annotations

from typing import Protocol

from mixhouse.otc.matching.errors import InvalidPrice, InvalidQuantity


class PairRulesLike(Protocol):
    """The steps and limits of one pair.

    Attributes:
        base_decimals: decimals of the base asset (BTC 8, ETH 18).
        tick: price step, quote base units per whole base asset; prices are positive multiples.
        lot: quantity step, base units; quantities, minimum fills and remaining quantities are
            multiples of it, so every fill is too.
        min_quantity: the smallest order quantity, base units.
        max_quantity: the largest order quantity, base units.
        max_price: the largest price.
    """

    @property
    def base_decimals(self) -> int: ...
    @property
    def tick(self) -> int: ...
    @property
    def lot(self) -> int: ...
    @property
    def min_quantity(self) -> int: ...
    @property
    def max_quantity(self) -> int: ...
    @property
    def max_price(self) -> int: ...


def check_rules(rules: PairRulesLike) -> None:
    """Raises:
    ValueError: non-positive steps, limits that are not multiples of the lot, an empty
        quantity range, or no valid price (``min_price(rules) > max_price``).
    """
    if rules.base_decimals < 0 or rules.tick <= 0 or rules.lot <= 0:
        raise ValueError("base_decimals must be >= 0, tick and lot > 0")
    if rules.min_quantity < rules.lot or rules.min_quantity % rules.lot or rules.max_quantity % rules.lot:
        raise ValueError("min_quantity and max_quantity must be multiples of lot, min_quantity >= lot")
    if rules.min_quantity > rules.max_quantity:
        raise ValueError("min_quantity > max_quantity")
    if min_price(rules) > rules.max_price:
        raise ValueError("no valid price: one lot is worth less than one quote base unit up to max_price")


def min_price(rules: PairRulesLike) -> int:
    """The lowest valid price: the smallest multiple of ``tick`` at which one ``lot`` (the
    smallest possible fill) is worth at least one quote base unit, so that no fill ever has a
    quote amount of 0. BTC/USDT with a 1-satoshi lot: 100 USDT per BTC."""
    unit: int = 10**rules.base_decimals
    lowest = -(-unit // rules.lot)  # ceil(unit / lot): lot * price >= unit
    return max(rules.tick, -(-lowest // rules.tick) * rules.tick)


def check_price(rules: PairRulesLike, price: int) -> None:
    """Raises:
    InvalidPrice: ``price`` is not an int multiple of ``tick`` in ``[min_price, max_price]``.
    """
    if (
        type(price) is not int
        or price % rules.tick
        or price > rules.max_price
        or price <= 0
        or price * rules.lot < 10**rules.base_decimals
    ):
        raise InvalidPrice(
            f"price {price!r} must be a multiple of the tick {rules.tick} in [{min_price(rules)}, {rules.max_price}]"
        )


def check_quantity(rules: PairRulesLike, quantity: int, min_fill: int) -> None:
    """Check an order's quantity and its minimum fill (0: none).

    Raises:
        InvalidQuantity: ``quantity`` is not an int multiple of ``lot`` in
            ``[min_quantity, max_quantity]``; ``min_fill`` is not an int multiple of ``lot`` in
            ``[0, quantity]``.
    """
    if type(quantity) is not int or quantity % rules.lot or not rules.min_quantity <= quantity <= rules.max_quantity:
        raise InvalidQuantity(
            f"quantity {quantity!r} must be a multiple of the lot {rules.lot}"
            f" in [{rules.min_quantity}, {rules.max_quantity}]"
        )
    if type(min_fill) is not int or min_fill < 0 or min_fill > quantity or min_fill % rules.lot:
        raise InvalidQuantity(f"min_fill {min_fill!r} must be a multiple of the lot {rules.lot} in [0, quantity]")
