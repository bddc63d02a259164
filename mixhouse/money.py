"""Assets and amounts.

Every amount in Mixhouse is an ``int`` in the asset's base unit (satoshi, wei, jobcoin base
unit). :class:`decimal.Decimal` appears only at the edges, where a human or an API speaks in
whole coins, and the conversion is exact or it fails: ``parse_amount("0.123456789", 8)``
raises rather than rounding.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation

from mixhouse.errors import InvalidAmount


class Asset(enum.StrEnum):
    """The assets Mixhouse can mix. The value is stored in the database by name."""

    JOBCOIN = "JOBCOIN"
    ETH = "ETH"
    BTC = "BTC"


@dataclass(frozen=True, slots=True)
class AssetInfo:
    """Static facts of an asset.

    Attributes:
        asset: the asset.
        decimals: base units per coin as a power of ten (8 for jobcoin, 18 for ETH).
        unit: the name of the base unit, for messages ("wei").
        dust: the smallest payout in base units: below it a payout would cost more to move
            than it is worth (or a chain would refuse it).
    """

    asset: Asset
    decimals: int
    unit: str
    dust: int


ASSETS: dict[Asset, AssetInfo] = {
    # The Jobcoin API speaks decimal strings ("49.5") without a declared precision; we fix
    # 8 decimals (like satoshi) and reject anything finer instead of rounding it away.
    Asset.JOBCOIN: AssetInfo(Asset.JOBCOIN, 8, "jobcoin base unit", dust=10_000),
    Asset.ETH: AssetInfo(Asset.ETH, 18, "wei", dust=10**12),
    # 546 satoshi: Bitcoin Core's dust threshold of a P2PKH output at the default 3 sat/vB
    # dust relay fee (policy.cpp GetDustThreshold); a P2WPKH output's is 294, 546 covers both.
    Asset.BTC: AssetInfo(Asset.BTC, 8, "satoshi", dust=546),
}

# Largest value a NUMERIC(78,0) column holds comfortably and far above any real supply;
# anything larger is certainly an input error.
MAX_BASE_UNITS = 10**70


def parse_amount(text: str, decimals: int) -> int:
    """Convert a decimal string in whole coins to base units, exactly.

    Args:
        text: a plain decimal such as ``"49.5"``; no exponent, sign must be absent.
        decimals: the asset's decimals (8 for jobcoin, 18 for ETH).

    Returns:
        The amount in base units, ``> 0``.

    Raises:
        InvalidAmount: malformed, zero, negative, exponent notation, more fractional
            digits than ``decimals``, or absurdly large.
    """
    cleaned = text.strip()
    if not cleaned or any(ch not in "0123456789." for ch in cleaned) or cleaned.count(".") > 1:
        raise InvalidAmount(f"amount {text!r} is not a plain positive decimal number")
    if cleaned in {".", ""}:
        raise InvalidAmount(f"amount {text!r} is not a number")
    try:
        value = Decimal(cleaned)
    except InvalidOperation as exc:  # pragma: no cover - guarded by the character check
        raise InvalidAmount(f"amount {text!r} is not a number") from exc
    # ``scaleb`` rounds to the context precision (28 digits by default), which would turn a
    # long amount into a silently rounded one; a precision as long as the input keeps it exact.
    scaled = value.scaleb(decimals, Context(prec=len(cleaned) + decimals))
    if scaled != scaled.to_integral_value():
        raise InvalidAmount(f"amount {text!r} has more than {decimals} decimal places")
    base_units = int(scaled)
    if base_units <= 0:
        raise InvalidAmount(f"amount {text!r} must be greater than zero")
    if base_units > MAX_BASE_UNITS:
        raise InvalidAmount(f"amount {text!r} is too large")
    return base_units


def format_amount(base_units: int, decimals: int) -> str:
    """Render base units as a decimal string in whole coins, without trailing zeros.

    ``format_amount(4_950_000_000, 8) == "49.5"``; ``format_amount(0, 8) == "0"``.
    """
    sign = "-" if base_units < 0 else ""
    whole, frac = divmod(abs(base_units), 10**decimals)
    if frac == 0:
        return f"{sign}{whole}"
    frac_text = str(frac).rjust(decimals, "0").rstrip("0")
    return f"{sign}{whole}.{frac_text}"


def percent_of(amount: int, basis_points: int) -> int:
    """``amount * basis_points / 10_000`` rounded down, in the same base unit.

    Rounding down favours the user: the fee is never more than quoted.
    """
    if amount < 0 or basis_points < 0:
        raise InvalidAmount("amount and basis points must not be negative")
    return amount * basis_points // 10_000
