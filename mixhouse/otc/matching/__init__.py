"""The OTC matching engine: a pure core (no I/O, no clock, integers only).

One ``MatchingEngine`` per pair holds the book (price levels with FIFO queues in price-time
priority) and its rules (``engine.py`` documents them: time in force, minimum fills,
self-trade prevention, expiry; ``amounts.py`` the rounding of quote amounts).
"""

from mixhouse.otc.matching.amounts import quote_amount
from mixhouse.otc.matching.book import BookSnapshot, LevelDepth
from mixhouse.otc.matching.engine import MatchingEngine
from mixhouse.otc.matching.errors import (
    DuplicateOrder,
    InvalidOrder,
    InvalidPrice,
    InvalidQuantity,
    InvalidReduction,
    OrderExpired,
    UnknownOrder,
    WouldCross,
)
from mixhouse.otc.matching.executions import Execution, Fill, PlannedFill, Reason, TakePlan
from mixhouse.otc.matching.orders import (
    NEVER_MS,
    Order,
    OrderStatus,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from mixhouse.otc.matching.rules import PairRulesLike, check_price, check_quantity, check_rules, min_price

__all__ = [
    "NEVER_MS",
    "BookSnapshot",
    "DuplicateOrder",
    "Execution",
    "Fill",
    "InvalidOrder",
    "InvalidPrice",
    "InvalidQuantity",
    "InvalidReduction",
    "LevelDepth",
    "MatchingEngine",
    "Order",
    "OrderExpired",
    "OrderStatus",
    "PairRulesLike",
    "PlannedFill",
    "Reason",
    "SelfTradePrevention",
    "Side",
    "TakePlan",
    "TimeInForce",
    "UnknownOrder",
    "WouldCross",
    "check_price",
    "check_quantity",
    "check_rules",
    "min_price",
    "quote_amount",
]
