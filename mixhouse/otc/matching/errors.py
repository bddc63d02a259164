"""The errors of the matching engine.

Every error here means the call changed nothing: the book, the order records and the
expiry index are exactly as they were before it.
"""

from __future__ import annotations

from mixhouse.errors import IllegalTransition, InvalidInput, NotFound


class InvalidOrder(InvalidInput):
    """An order breaks its pair's rules (``PairRules``) or is malformed; it was not placed."""


class InvalidQuantity(InvalidOrder):
    """A quantity or a minimum fill is not positive, not a multiple of the lot, or out of
    the pair's ``[min_quantity, max_quantity]``."""


class InvalidPrice(InvalidOrder):
    """A price is not positive, not a multiple of the tick, or so low that one lot at it is
    worth less than one quote base unit (a fill would move nothing of the quote asset)."""


class OrderExpired(InvalidOrder):
    """The order's ``expires_at_ms`` is not after the engine's ``now_ms``."""


class DuplicateOrder(InvalidOrder):
    """An order with this id is already in the book."""


class WouldCross(InvalidOrder):
    """``add()`` was asked to rest an order that crosses the book (it would trade).

    Attributes:
        crossed: ids of the resting orders it crosses, best first (at most a few).
    """

    def __init__(self, message: str, *, crossed: list[str]) -> None:
        super().__init__(message)
        self.crossed = crossed


class UnknownOrder(NotFound):
    """No open order with this id is in the book (never added, or already closed)."""


class InvalidReduction(IllegalTransition):
    """``reduce()`` was asked to raise an order's remaining quantity, or to set it to a value
    that is not a multiple of the lot; remaining quantities only go down."""
