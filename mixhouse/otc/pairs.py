"""The trading pairs of the OTC network, their assets' decimals and the rules of each pair.

A pair is ``BASE/QUOTE`` (``BTC/USDT``). Quantities are ints in the BASE asset's base units
(satoshi for BTC, wei for ETH); prices are ints in QUOTE base units per ONE WHOLE base asset
(``10**base_decimals`` base units), as exchanges quote: BTC/USDT at 60000.5 USDT is
``60_000_500_000``. The quote amount of a fill is computed by the matching engine's
``quote_amount(quantity, price, base_decimals)``.

Every node of the network must hold the same table: an order for a pair a node does not list
is refused by it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixhouse.errors import InvalidInput


class UnknownPair(InvalidInput):
    """The pair is not one of :data:`PAIRS` (or is not written ``BASE/QUOTE``)."""


# Decimals of each asset (base units per whole coin as a power of ten): BTC satoshi, ETH wei,
# USDT's 6 decimals (the ERC-20 contract's ``decimals()``).
ASSET_DECIMALS: dict[str, int] = {"BTC": 8, "ETH": 18, "USDT": 6}


@dataclass(frozen=True, slots=True)
class PairRules:
    """What a valid order of one pair looks like.

    Attributes:
        pair: ``"BASE/QUOTE"``.
        base: the base asset (quantities are in its base units).
        quote: the quote asset (prices are in its base units per whole base coin).
        base_decimals: decimals of the base asset.
        quote_decimals: decimals of the quote asset.
        tick: prices are multiples of this (quote base units per whole base coin).
        lot: quantities are multiples of this (base units).
        min_quantity: smallest order quantity (base units).
        max_quantity: largest order quantity (base units), far above any real order.
        max_price: largest price (quote base units per whole base coin).
    """

    pair: str
    base: str
    quote: str
    base_decimals: int
    quote_decimals: int
    tick: int
    lot: int
    min_quantity: int
    max_quantity: int
    max_price: int


PAIRS: dict[str, PairRules] = {
    # Tick 0.01 USDT; lot 1 satoshi; at least 10,000 sat (0.0001 BTC); at most 21M BTC.
    "BTC/USDT": PairRules(
        "BTC/USDT",
        "BTC",
        "USDT",
        8,
        6,
        tick=10_000,
        lot=1,
        min_quantity=10_000,
        max_quantity=21_000_000 * 10**8,
        max_price=10**9 * 10**6,
    ),
    # Tick 10^-6 ETH (10^12 wei) per BTC.
    "BTC/ETH": PairRules(
        "BTC/ETH",
        "BTC",
        "ETH",
        8,
        18,
        tick=10**12,
        lot=1,
        min_quantity=10_000,
        max_quantity=21_000_000 * 10**8,
        max_price=10**9 * 10**18,
    ),
    # Tick 0.01 USDT per ETH; lot 1 gwei (10^9 wei); at least 0.001 ETH.
    "ETH/USDT": PairRules(
        "ETH/USDT",
        "ETH",
        "USDT",
        18,
        6,
        tick=10_000,
        lot=10**9,
        min_quantity=10**15,
        max_quantity=10**9 * 10**18,
        max_price=10**9 * 10**6,
    ),
}


def pair_rules(pair: str) -> PairRules:
    """The rules of ``pair``.

    Raises:
        UnknownPair: ``pair`` is not listed.
    """
    rules = PAIRS.get(pair)
    if rules is None:
        raise UnknownPair(f"unknown pair {pair[:32]!r}: one of {', '.join(sorted(PAIRS))}")
    return rules
