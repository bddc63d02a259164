"""The node's errors (narrow subclasses of :mod:`mixhouse.errors`)."""

from __future__ import annotations

import logging

from mixhouse.errors import IllegalTransition, InvalidInput, NotFound
from mixhouse.otc.orders import (
    InvalidMessage,
)

log = logging.getLogger(__name__)


class OrderNotOpen(IllegalTransition):
    """The order is cancelled or filled already (a cancel lost to a take, or came twice)."""


class OrderNotFound(NotFound):
    """No own order has this id."""


class PostOnlyWouldTake(InvalidInput):
    """A post-only order crosses the book; it was not placed."""


class ProtocolViolation(InvalidMessage):
    """A peer's message contradicts what this node recorded (a grant larger than asked)."""
