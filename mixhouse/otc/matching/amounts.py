"""Quote amounts of fills and the rounding rule.

A price is an ``int``: QUOTE base units per ONE WHOLE base asset (``10**base_decimals`` base
units), as exchanges quote (BTC/USDT at 60000.5 USDT is ``60_000_500_000`` micro-USDT per BTC).
A fill of ``quantity`` base units at ``price`` moves ``quantity * price / 10**base_decimals``
quote base units, which is not always an integer.

Rounding rule: the quote amount is rounded DOWN (floor), once per fill. The payer of the quote
asset (the buyer of the base asset, maker or taker) never pays more than price times quantity;
the sub-unit remainder (less than one quote base unit per fill) stays with the buyer. Both
sides record the same integer, so what one side pays the other receives (the quote moved sums
to zero). It does not depend on which side is the maker, so every node computes the same
number from the fill alone.

A fill whose quote amount would be 0 is impossible by construction: ``PairRules.check_price``
refuses a price at which one lot (the smallest fill) is worth less than one quote base unit.
"""

from __future__ import annotations


def quote_amount(quantity: int, price: int, base_decimals: int) -> int:
    """Quote base units moved by a fill, rounded down (the buyer keeps the remainder).

    Args:
        quantity: base units filled (satoshi for BTC), ``>= 0``.
        price: quote base units per one whole base asset, ``>= 0``.
        base_decimals: decimals of the base asset (8 for BTC, 18 for ETH).

    Returns:
        ``quantity * price // 10**base_decimals``.

    Raises:
        ValueError: a negative argument (the engine never passes one).
    """
    if quantity < 0 or price < 0 or base_decimals < 0:
        raise ValueError("quote_amount takes non-negative quantity, price and decimals")
    unit: int = 10**base_decimals
    return quantity * price // unit
