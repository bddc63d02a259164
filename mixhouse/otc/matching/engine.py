"""The matching engine of one pair: submit, cancel, reduce, expire; a non-mutating planner.

Semantics (every rule here is tested in tests/test_otc_matching*.py):

* Priority: better price first (highest bid, lowest ask); at one price the earlier
  ``created_ms`` (signed by the owner), then the smaller id. A fill is at the maker's price.
* Partial fills: an incoming order trades with resting orders in priority order while they
  cross its limit; what is left rests (GTC, post-only) or is cancelled (IOC).
* Time in force: GTC rests its remainder; IOC never rests; FOK fills completely or is
  rejected with nothing changed; post-only never takes: rejected if it crosses.
* Minimum fill: a fill is made only if it is at least the taker's ``min_fill`` and at least
  the maker's ``min_fill``, except that an order whose remaining quantity is below its own
  ``min_fill`` accepts a fill of all of it (its last remainder). A resting order that cannot be
  filled under these rules is skipped, not removed; the taker goes on to the next one. If a
  GTC remainder still crosses such a skipped order it is cancelled rather than rested
  (``Reason.WOULD_REST_CROSSED``): the book never rests crossed.
* Self-trade prevention: an owner never trades with itself; ``SelfTradePrevention`` says
  whether its resting order or the incoming order's remainder is cancelled.
* Expiry: an order is expired from ``expires_at_ms`` on. ``submit`` first expires every order
  due at ``now_ms``; the planner skips them; nothing fills an expired order.
* Integers only; quote amounts as ``amounts.quote_amount`` computes them (rounded down, never
  0; inlined in ``submit``, the tests hold the two equal).

In the network only an order's owner may fill it: a node calls ``plan_take`` to learn whom
its incoming order would cross, asks each owner, then applies each answer with
``reduce(maker_id, new_remaining)`` (a fill) or ``cancel(maker_id)``, and ``add()``s the
remainder. ``add`` rests an order without matching and refuses one that crosses
(``WouldCross``): a crossed foreign order is kept out of the book by the node until the owners
settle the crossing by a take.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence

from mixhouse.otc.matching.book import COMPACT_SLACK, Book, BookSide, BookSnapshot, LevelDepth
from mixhouse.otc.matching.errors import (
    DuplicateOrder,
    InvalidOrder,
    InvalidReduction,
    OrderExpired,
    UnknownOrder,
    WouldCross,
)
from mixhouse.otc.matching.executions import Execution, Fill, PlannedFill, Reason, TakePlan
from mixhouse.otc.matching.orders import NEVER_MS, Order, OrderStatus, SelfTradePrevention, Side, TimeInForce
from mixhouse.otc.matching.rules import PairRulesLike, check_price, check_quantity, check_rules, min_price

_NEW = OrderStatus.NEW
_OPEN = OrderStatus.OPEN
_FILLED = OrderStatus.FILLED
_CANCELLED = OrderStatus.CANCELLED
_BUY = Side.BUY
_GTC = TimeInForce.GTC
_IOC = TimeInForce.IOC
_FOK = TimeInForce.FOK
_POST_ONLY = TimeInForce.POST_ONLY
_CANCEL_TAKER = SelfTradePrevention.CANCEL_TAKER


# The expiry index is rebuilt when it holds this many more stale entries than 4 per open order.
_STALE_SLACK = 4096


class MatchingEngine:
    """The book and matching rules of one pair. Not thread-safe; one owner calls it.

    Args:
        rules: the pair's tick, lot and size limits (``mixhouse.otc.pairs.PairRules``).
        stp: the self-trade prevention policy.

    Raises:
        ValueError: inconsistent rules (``rules.check_rules``).
    """

    __slots__ = (
        "_asks",
        "_bids",
        "_book",
        "_buckets",
        "_expiry",
        "_lot",
        "_max_price",
        "_max_quantity",
        "_min_price",
        "_min_quantity",
        "_orders",
        "_rules",
        "_stale",
        "_stale_limit",
        "_stp",
        "_tick",
        "_unit",
    )

    def __init__(self, rules: PairRulesLike, *, stp: SelfTradePrevention = SelfTradePrevention.CANCEL_RESTING) -> None:
        check_rules(rules)
        self._rules = rules
        self._stp = stp
        self._book = Book()
        self._orders: dict[str, Order] = self._book.orders
        self._bids = self._book.bids
        self._asks = self._book.asks
        # The rules as plain attributes: submit's common-case check reads them without calls.
        self._tick = rules.tick
        self._unit: int = 10**rules.base_decimals
        self._lot = rules.lot
        self._min_price = min_price(rules)
        self._max_price = rules.max_price
        self._min_quantity = rules.min_quantity
        self._max_quantity = rules.max_quantity
        # Expiry index: a heap of the distinct expiry times (ms) and, per time, the orders that
        # expire then (often several: orders placed in the same ms with the same TTL). Closing
        # or refreshing an order does not touch it (that cost a third of a cancel, cache misses
        # in a dict per bucket): the entry goes stale and is skipped when its time comes, and
        # the index is rebuilt from the open orders when stale entries outnumber them 4 to 1.
        self._expiry: list[int] = []
        self._buckets: dict[int, list[Order]] = {}
        self._stale = 0
        self._stale_limit = _STALE_SLACK

    @property
    def rules(self) -> PairRulesLike:
        """The pair's rules."""
        return self._rules

    # ---- checks --------------------------------------------------------------------------

    def _check_new(self, order: Order, now_ms: int) -> None:
        if order.status is not OrderStatus.NEW:
            raise InvalidOrder(f"order {order.id} is {order.status}, not new")
        if order.id in self._orders:
            raise DuplicateOrder(f"order {order.id} is already in the book")
        rules = self._rules
        check_price(rules, order.price)
        check_quantity(rules, order.quantity, order.min_fill)
        remaining = order.remaining
        if (
            type(remaining) is not int
            or remaining <= 0
            or remaining % rules.lot
            or order.filled < 0
            or order.cancelled < 0
            or order.filled + order.cancelled + remaining != order.quantity
        ):
            raise InvalidOrder(
                f"order {order.id}: remaining {remaining!r} must be a positive multiple of the lot"
                " with filled + cancelled + remaining == quantity"
            )
        if order.expires_at_ms <= now_ms:
            raise OrderExpired(f"order {order.id} expired at {order.expires_at_ms} (now {now_ms})")

    # ---- the walk (shared by submit and plan_take, so they cannot disagree) ---------------

    def _walk(self, order: Order, now_ms: int) -> tuple[list[tuple[Order, int]], list[Order], bool, int]:
        """The makers ``order`` would trade with, without changing anything.

        Returns:
            (fills as (maker, quantity) in priority order, same-owner makers met, stopped by
            CANCEL_TAKER, the order's remaining quantity after those fills).
        """
        opposite = self._book.asks if order.side is _BUY else self._book.bids
        sign = opposite.sign
        limit = sign * order.price
        levels = opposite.levels
        keys = opposite.keys
        remaining = order.remaining
        own_min = order.min_fill
        owner = order.owner
        cancel_taker = self._stp is _CANCEL_TAKER
        fills: list[tuple[Order, int]] = []
        selves: list[Order] = []
        index = len(keys) - 1
        while index >= 0:
            key = keys[index]
            if key < limit:
                break
            for maker in levels[sign * key].queue:
                available = maker.remaining
                if not available or maker.expires_at_ms <= now_ms:
                    continue
                if maker.owner == owner:
                    selves.append(maker)
                    if cancel_taker:
                        return fills, selves, True, remaining
                    continue
                quantity = available if available < remaining else remaining  # noqa: FURB136 - min() is a call
                # A fill below a side's min_fill is allowed only when it takes all that is left
                # of that side (quantity == remaining of it).
                if quantity < remaining and quantity < own_min:
                    continue
                if quantity < available and quantity < maker.min_fill:
                    continue
                fills.append((maker, quantity))
                remaining -= quantity
                if not remaining:
                    return fills, selves, False, 0
            index -= 1
        return fills, selves, False, remaining

    def _crosses_live(self, opposite: BookSide, limit: int, now_ms: int) -> list[str]:
        """Ids of up to 8 non-expired resting orders of ``opposite`` within key ``limit``."""
        crossed: list[str] = []
        sign = opposite.sign
        for key in reversed(opposite.keys):
            if key < limit:
                break
            for maker in opposite.levels[sign * key].queue:
                if maker.remaining and maker.expires_at_ms > now_ms:
                    crossed.append(maker.id)
                    if len(crossed) >= 8:
                        return crossed
        return crossed

    # ---- mutations ------------------------------------------------------------------------

    def submit(self, order: Order, *, now_ms: int) -> Execution:
        """Match an incoming order against the book, then rest, cancel or reject what is left.

        Args:
            order: a ``NEW`` order of this pair (``remaining`` may be below ``quantity`` if the
                caller already filled part of it elsewhere).
            now_ms: the current time, Unix ms: orders expired at it are removed first.

        Returns:
            The ``Execution``: fills in priority order, the order's new status, the reason for
            a cancelled or rejected part, self-trade cancels and expired orders.

        Raises:
            InvalidOrder: (or a subclass: ``InvalidPrice``, ``InvalidQuantity``,
                ``OrderExpired``, ``DuplicateOrder``) nothing changed.
        """
        price = order.price
        quantity = order.quantity
        # One expression passes the common order (no min fill, nothing filled yet); anything
        # else gets the full checks, which raise the precise error or find it valid after all.
        if (
            order.status is not _NEW
            or price.__class__ is not int
            or quantity.__class__ is not int
            or order.remaining != quantity
            or order.min_fill
            or order.filled
            or order.cancelled
            or price % self._tick
            or quantity % self._lot
            or not self._min_price <= price <= self._max_price
            or not self._min_quantity <= quantity <= self._max_quantity
            or order.expires_at_ms <= now_ms
            or order.id in self._orders
        ):
            self._check_new(order, now_ms)
        expiry = self._expiry
        expired: Sequence[Order] = self.expire(now_ms) if expiry and expiry[0] <= now_ms else ()
        if order.side is _BUY:
            own, opposite, limit = self._bids, self._asks, -price
        else:
            own, opposite, limit = self._asks, self._bids, price
        keys = opposite.keys
        tif = order.tif
        if not keys or keys[-1] < limit:
            # Does not cross: the common case, kept short (_rest inlined for the latest order at
            # its price, the usual one).
            if tif is _GTC or tif is _POST_ONLY:
                level = own.levels.get(price)
                if level is None:
                    level = own.level_for(price)
                queue = level.queue
                if queue:
                    last = queue[-1]
                    created = order.created_ms
                    if created < last.created_ms or (created == last.created_ms and order.id < last.id):
                        self._rest(own, order)
                        return Execution(order, (), None, (), expired)
                order.status = _OPEN
                queue.append(order)
                level.count += 1
                self._orders[order.id] = order
                if order.expires_at_ms != NEVER_MS:
                    self._track_expiry(order)
                return Execution(order, (), None, (), expired)
            return self._kill(order, Reason.IOC_REMAINDER if tif is _IOC else Reason.FOK_NOT_FILLABLE, expired)
        if tif is _POST_ONLY:
            return self._kill(order, Reason.POST_ONLY_WOULD_TAKE, expired)
        planned, selves, stopped, left = self._walk(order, now_ms)
        if tif is _FOK and left:
            return self._kill(order, Reason.FOK_NOT_FILLABLE, expired)
        fills: list[Fill] = []
        unit = self._unit
        taker_id = order.id
        taker_owner = order.owner
        side = order.side
        orders = self._orders
        levels = opposite.levels
        for maker, filled in planned:
            # Book.unlink and quote_amount (rounded down) inlined: a take
            # costs about one of these per maker.
            maker_left = maker.remaining - filled
            maker.remaining = maker_left
            maker.filled += filled
            maker_price = maker.price
            if not maker_left:
                maker.status = _FILLED
                del orders[maker.id]
                level = levels[maker_price]
                level.count -= 1
                if not level.count:
                    opposite.remove_level(maker_price)
                else:
                    # PriceLevel.drop_dead inlined: the filled maker is usually at the front.
                    queue = level.queue
                    while not queue[0].remaining:
                        queue.popleft()
                    if len(queue) > 2 * level.count + COMPACT_SLACK:
                        level.drop_dead()
                self._stale += 1
            fills.append(
                Fill(
                    maker.id,
                    taker_id,
                    maker.owner,
                    taker_owner,
                    side,
                    maker_price,
                    filled,
                    filled * maker_price // unit,
                    maker_left,
                )
            )
        execution = Execution(order, fills, None, (), expired)
        order.filled += order.remaining - left
        order.remaining = left
        if not stopped:
            for maker in selves:
                self._close(maker, OrderStatus.CANCELLED)
            execution.self_trade_cancelled = selves
        if not left:
            order.status = OrderStatus.FILLED
        elif stopped:
            self._withdraw(order, Reason.SELF_TRADE, execution)
        elif tif is not _GTC:
            self._withdraw(order, Reason.IOC_REMAINDER, execution)
        elif opposite.keys and opposite.keys[-1] >= limit:
            self._withdraw(order, Reason.WOULD_REST_CROSSED, execution)
        else:
            self._rest(own, order)
        return execution

    def _rest(self, book_side: BookSide, order: Order) -> None:
        """Queue a checked order (``remaining > 0``) on its side, index it and its expiry.
        (``submit`` inlines this for the latest order at its price; keep the two in step.)"""
        order.status = _OPEN
        price = order.price
        level = book_side.levels.get(price)
        if level is None:
            level = book_side.level_for(price)
        level.append(order)
        self._orders[order.id] = order
        if order.expires_at_ms != NEVER_MS:
            self._track_expiry(order)

    def _track_expiry(self, order: Order) -> None:
        """Index an order with an expiry in its bucket (and the bucket time in the heap);
        rebuild the heap once too many of its entries are stale."""
        at = order.expires_at_ms
        bucket = self._buckets.get(at)
        if bucket is None:
            self._buckets[at] = [order]
            heapq.heappush(self._expiry, at)
        else:
            bucket.append(order)
        if self._stale > self._stale_limit:
            self._rebuild_expiry()

    def _kill(self, order: Order, reason: Reason, expired: Sequence[Order]) -> Execution:
        """Reject or cancel all of an order that never touched the book."""
        order.cancelled += order.remaining
        order.remaining = 0
        order.status = OrderStatus.CANCELLED if reason is Reason.IOC_REMAINDER else OrderStatus.REJECTED
        return Execution(order, (), reason, (), expired)

    @staticmethod
    def _withdraw(order: Order, reason: Reason, execution: Execution) -> None:
        """Cancel the unfilled remainder of an incoming order after its fills."""
        order.cancelled += order.remaining
        order.remaining = 0
        order.status = OrderStatus.CANCELLED
        execution.reason = reason

    def _close(self, order: Order, status: OrderStatus) -> None:
        """Take an open order out of the book (its expiry entry goes stale); its remainder counts
        as cancelled."""
        order.cancelled += order.remaining
        order.remaining = 0
        order.status = status
        self._book.unlink(order)
        self._stale += 1

    def _rebuild_expiry(self) -> None:
        """Rebuild the expiry index from the open orders, dropping the stale entries
        (amortised: it runs after 4 times as many closes as there are open orders)."""
        buckets: dict[int, list[Order]] = {}
        for order in self._orders.values():
            at = order.expires_at_ms
            if at != NEVER_MS:
                bucket = buckets.get(at)
                if bucket is None:
                    buckets[at] = [order]
                else:
                    bucket.append(order)
        self._buckets = buckets
        self._expiry = list(buckets)
        heapq.heapify(self._expiry)
        self._stale = 0
        self._stale_limit = 4 * len(self._orders) + _STALE_SLACK

    def add(self, order: Order, *, now_ms: int) -> None:
        """Rest an order without matching (an order learned from a peer, or the remainder of
        a take the node made through ``plan_take``).

        Args:
            order: a ``NEW`` order; ``remaining`` is its open quantity and
                ``filled + cancelled + remaining == quantity``.
            now_ms: the current time, Unix ms.

        Raises:
            InvalidOrder: (or a subclass) as for ``submit``, or an IOC/FOK order (they never rest).
            WouldCross: it crosses a non-expired resting order (``.crossed`` has their ids);
                the node keeps it out of the book. Nothing changed.
        """
        self._check_new(order, now_ms)
        if order.tif is not _GTC and order.tif is not _POST_ONLY:
            raise InvalidOrder(f"order {order.id} is {order.tif}: only GTC and post-only orders rest")
        opposite = self._book.asks if order.side is _BUY else self._book.bids
        limit = opposite.sign * order.price
        if opposite.keys and opposite.keys[-1] >= limit:
            crossed = self._crosses_live(opposite, limit, now_ms)
            if crossed:
                raise WouldCross(f"order {order.id} crosses resting orders {crossed}", crossed=crossed)
            # Only expired orders stand in the way: retire them before resting this one.
            self.expire(now_ms)
        self._rest(self._book.bids if order.side is _BUY else self._book.asks, order)

    def cancel(self, order_id: str) -> Order:
        """Take an open order out of the book (its owner cancelled it or said it is gone).

        Returns:
            The order, status ``CANCELLED``, its remainder counted in ``cancelled``.

        Raises:
            UnknownOrder: no open order has this id.
        """
        order = self._orders.pop(order_id, None)
        if order is None:
            raise UnknownOrder(f"no open order {order_id}")
        # _close and Book.unlink inlined: a third of the operations are cancels.
        order.cancelled += order.remaining
        order.remaining = 0
        order.status = _CANCELLED
        book_side = self._bids if order.side is _BUY else self._asks
        level = book_side.levels[order.price]
        level.count -= 1
        if not level.count:
            book_side.remove_level(order.price)
        else:
            queue = level.queue
            while not queue[0].remaining:
                queue.popleft()
            if len(queue) > 2 * level.count + COMPACT_SLACK:
                level.drop_dead()
        self._stale += 1
        return order

    def remove(self, order_id: str) -> Order:
        """The same as ``cancel``: for an order owned elsewhere whose owner said it is gone.

        Raises:
            UnknownOrder: no open order has this id.
        """
        return self.cancel(order_id)

    def reduce(self, order_id: str, new_remaining: int) -> Order:
        """Set an open order's remaining quantity to ``new_remaining`` after a fill made by
        its owner (the owner broadcasts the new remaining); the difference counts as filled.
        Idempotent: the same ``new_remaining`` again changes nothing. 0 closes it as
        ``FILLED``.

        Returns:
            The order.

        Raises:
            UnknownOrder: no open order has this id.
            InvalidReduction: ``new_remaining`` is above the current remaining, negative or not a
                multiple of the lot. Nothing changed.
        """
        order = self._orders.get(order_id)
        if order is None:
            raise UnknownOrder(f"no open order {order_id}")
        if (
            type(new_remaining) is not int
            or not 0 <= new_remaining <= order.remaining
            or new_remaining % self._rules.lot
        ):
            raise InvalidReduction(f"order {order_id}: remaining {order.remaining} cannot become {new_remaining!r}")
        filled = order.remaining - new_remaining
        if filled:
            order.remaining = new_remaining
            order.filled += filled
            if not new_remaining:
                order.status = OrderStatus.FILLED
                self._book.unlink(order)
                self._stale += 1
        return order

    def refresh(self, order_id: str, expires_at_ms: int) -> Order:
        """Move an open order's expiry (its owner refreshed it while online).

        Raises:
            UnknownOrder: no open order has this id.
        """
        order = self._orders.get(order_id)
        if order is None:
            raise UnknownOrder(f"no open order {order_id}")
        if expires_at_ms != order.expires_at_ms:
            self._stale += 1
            order.expires_at_ms = expires_at_ms
            if expires_at_ms != NEVER_MS:
                self._track_expiry(order)
        return order

    def expire(self, now_ms: int) -> list[Order]:
        """Remove every open order with ``expires_at_ms <= now_ms``.

        Returns:
            The expired orders (status ``EXPIRED``), earliest expiry first.
        """
        expiry = self._expiry
        buckets = self._buckets
        expired: list[Order] = []
        while expiry and expiry[0] <= now_ms:
            at = heapq.heappop(expiry)
            for order in buckets.pop(at):
                # Skip the stale entries: closed since, or refreshed to another time.
                if order.status is _OPEN and order.expires_at_ms == at:
                    self._close(order, OrderStatus.EXPIRED)
                    expired.append(order)
        return expired

    # ---- reads ----------------------------------------------------------------------------

    def plan_take(self, order: Order, *, now_ms: int) -> TakePlan:
        """What ``submit(order)`` would trade, without changing anything.

        The order need not be new (the node plans for its own order before asking the makers'
        owners); its ``remaining``, ``min_fill``, ``owner``, ``side``, ``price`` and ``tif``
        are used. Expired makers are skipped.

        Returns:
            The ``TakePlan``: the makers in priority order with quantities, the same-owner
            orders met, whether a FOK would execute; ``blocked`` for a crossing post-only.
        """
        opposite = self._book.asks if order.side is _BUY else self._book.bids
        if order.tif is _POST_ONLY:
            crossing = bool(self._crosses_live(opposite, opposite.sign * order.price, now_ms))
            return TakePlan([], [], False, 0, False, blocked=crossing)
        planned, selves, stopped, left = self._walk(order, now_ms)
        fills = [PlannedFill(maker, quantity, maker.price) for maker, quantity in planned]
        return TakePlan(fills, selves, stopped, order.remaining - left, not left)

    def get(self, order_id: str) -> Order | None:
        """The open order with this id, or None."""
        return self._orders.get(order_id)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._orders

    def __len__(self) -> int:
        return len(self._orders)

    def __iter__(self) -> Iterator[Order]:
        """Every open order: bids best first, then asks best first, time priority within a price."""
        return iter(self._book)

    def best_bid(self) -> int | None:
        """The highest bid price, or None."""
        return self._book.bids.best()

    def best_ask(self) -> int | None:
        """The lowest ask price, or None."""
        return self._book.asks.best()

    def depth(self, side: Side, limit: int | None = None) -> list[LevelDepth]:
        """One side aggregated by price, best first, at most ``limit`` levels (None: all)."""
        return self._book.depth(side, limit)

    def snapshot(self, limit: int | None = None) -> BookSnapshot:
        """Both sides aggregated by price, best first."""
        return self._book.snapshot(limit)
