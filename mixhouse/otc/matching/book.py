"""One pair's book: price levels with FIFO queues, one side each for bids and asks.

Data structures (chosen for the hot path of a pure-Python engine, see benchmarks/otc.py):

* a side is a ``dict`` price -> ``PriceLevel`` plus a sorted ``list`` of keys with the best
  price at the END (bids: key = price; asks: key = -price), so the best level is ``keys[-1]``,
  a new best level is an ``append`` and an emptied best level a ``pop``; other levels are found
  with ``bisect`` (a ``memmove`` of a few kilobytes at most at realistic depths);
* a level is a ``deque`` of orders in time priority (``created_ms`` then id), with lazy
  deletion: a cancelled or filled order stays in the deque with ``remaining == 0`` until it
  reaches the front or the level is compacted, so a cancel is O(1) and never searches the
  queue. The level counts its live orders (``count``); the quantity at a price is summed
  only when a depth view asks for it (a running total cost every place and cancel);
* the book keeps ``dict`` id -> order of every open order.

This module holds the structure only; the rules of matching are in ``engine.py``.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from mixhouse.otc.matching.orders import Order, Side

# A level whose deque holds more dead entries than this (and more than live ones) is rebuilt:
# lazy deletion must not let a level that is cancelled into but never traded grow forever.
COMPACT_SLACK = 16


class PriceLevel:
    """The open orders at one price, in time priority.

    Attributes:
        price: the level's price (quote base units per whole base asset).
        queue: the orders, front first; entries with ``remaining == 0`` are dead (closed).
        count: number of live orders.
    """

    __slots__ = ("count", "price", "queue")

    def __init__(self, price: int) -> None:
        self.price = price
        self.queue: deque[Order] = deque()
        self.count = 0

    def append(self, order: Order) -> None:
        """Queue ``order`` behind every order with an earlier ``(created_ms, id)``.

        Orders usually arrive in time order (an ``append``); an order learned late from a peer
        is inserted where its signed timestamp puts it, searched from the back.
        """
        queue = self.queue
        if queue:
            last = queue[-1]
            if order.created_ms < last.created_ms or (order.created_ms == last.created_ms and order.id < last.id):
                key = (order.created_ms, order.id)
                position = len(queue) - 1
                while position > 0 and key < (queue[position - 1].created_ms, queue[position - 1].id):
                    position -= 1
                queue.insert(position, order)
                self.count += 1
                return
        queue.append(order)
        self.count += 1

    def drop_dead(self) -> None:
        """Pop dead entries off the front; rebuild the deque when dead entries dominate."""
        queue = self.queue
        while queue and not queue[0].remaining:
            queue.popleft()
        if len(queue) > 2 * self.count + COMPACT_SLACK:
            self.queue = deque(order for order in queue if order.remaining)

    def live(self) -> Iterator[Order]:
        """The live orders, front first."""
        return (order for order in self.queue if order.remaining)


class BookSide:
    """Bids or asks: levels by price and their keys sorted with the best price last.

    Attributes:
        side: ``Side.BUY`` for bids, ``Side.SELL`` for asks.
        sign: 1 for bids, -1 for asks; a level's key is ``sign * price``.
        levels: price -> level, only levels with at least one live order.
        keys: ``sign * price`` of every level, ascending (the best level last).
    """

    __slots__ = ("keys", "levels", "side", "sign")

    def __init__(self, side: Side) -> None:
        self.side = side
        self.sign = 1 if side is Side.BUY else -1
        self.levels: dict[int, PriceLevel] = {}
        self.keys: list[int] = []

    def best(self) -> int | None:
        """The best price (highest bid, lowest ask), or None when the side is empty."""
        return self.sign * self.keys[-1] if self.keys else None

    def level_for(self, price: int) -> PriceLevel:
        """The level at ``price``, created (and its key inserted in order) if absent."""
        level = self.levels.get(price)
        if level is None:
            level = self.levels[price] = PriceLevel(price)
            key = self.sign * price
            keys = self.keys
            if not keys or key > keys[-1]:
                keys.append(key)
            else:
                insort(keys, key)
        return level

    def remove_level(self, price: int) -> None:
        """Forget the level at ``price`` (it has no live order left)."""
        del self.levels[price]
        key = self.sign * price
        keys = self.keys
        if keys[-1] == key:
            keys.pop()
        else:
            del keys[bisect_left(keys, key)]

    def prices(self) -> Iterator[int]:
        """Level prices, best first."""
        sign = self.sign
        return (sign * key for key in reversed(self.keys))


@dataclass(frozen=True, slots=True)
class LevelDepth:
    """One aggregated price level of a depth view.

    Attributes:
        price: quote base units per whole base asset.
        quantity: total remaining quantity at this price, base units.
        count: number of orders.
    """

    price: int
    quantity: int
    count: int


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """Both sides aggregated by price, best first (bids descending, asks ascending)."""

    bids: list[LevelDepth]
    asks: list[LevelDepth]


class Book:
    """One pair's open orders: both sides and the id index. No matching rules here.

    Attributes:
        bids: the buy side.
        asks: the sell side.
        orders: id -> open order.
    """

    __slots__ = ("asks", "bids", "orders")

    def __init__(self) -> None:
        self.bids = BookSide(Side.BUY)
        self.asks = BookSide(Side.SELL)
        self.orders: dict[str, Order] = {}

    def side(self, side: Side) -> BookSide:
        """The book side that holds orders of ``side``."""
        return self.bids if side is Side.BUY else self.asks

    def rest(self, order: Order) -> None:
        """Queue ``order`` (already validated, ``remaining > 0``) on its side and index it."""
        (self.bids if order.side is Side.BUY else self.asks).level_for(order.price).append(order)
        self.orders[order.id] = order

    def unlink(self, order: Order) -> None:
        """Drop a dead order (``remaining == 0``: filled or closed) from the index and its
        level, and the level too if it is now empty."""
        book_side = self.bids if order.side is Side.BUY else self.asks
        level = book_side.levels[order.price]
        del self.orders[order.id]
        level.count -= 1
        if level.count:
            level.drop_dead()
        else:
            book_side.remove_level(order.price)

    def depth(self, side: Side, limit: int | None = None) -> list[LevelDepth]:
        """Aggregated levels of one side, best first, at most ``limit`` of them (None: all)."""
        book_side = self.side(side)
        result: list[LevelDepth] = []
        for price in book_side.prices():
            if limit is not None and len(result) >= limit:
                break
            level = book_side.levels[price]
            result.append(LevelDepth(price, sum(order.remaining for order in level.queue), level.count))
        return result

    def snapshot(self, limit: int | None = None) -> BookSnapshot:
        """Both sides' depth, best first."""
        return BookSnapshot(self.depth(Side.BUY, limit), self.depth(Side.SELL, limit))

    def __iter__(self) -> Iterator[Order]:
        """Every open order: bids best first, then asks best first, time priority within a price."""
        for book_side in (self.bids, self.asks):
            for price in book_side.prices():
                yield from book_side.levels[price].live()

    def __len__(self) -> int:
        return len(self.orders)
