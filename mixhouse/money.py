"""Assets and amounts.

Every amount in Mixhouse is an ``int`` in the asset's base unit (satoshi, wei, jobcoin base
unit). :class:`decimal.Decimal` appears only at the edges, where a human or an API speaks in
whole coins, and the conversion is exact or it fails: ``parse_amount("0.123456789", 8)``
raises rather than rounding.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from typing import ClassVar, Literal

from mixhouse.errors import ConfigError, InvalidAmount, InvalidInput

# An asset code: what the database stores and the API speaks ("ETH", "USDT").
_ASSET_CODE = re.compile(r"[A-Z][A-Z0-9]{1,15}")

ChainKind = Literal["jobcoin", "evm", "bitcoin"]


class Asset(str):
    """An asset's code, as stored in the database and spoken by the API (``"BTC"``, ``"USDT"``).

    Open, not an enum (issue 8 part 2): an asset is whatever the deployment configures
    (:meth:`mixhouse.config.Settings.assets`); ``JOBCOIN``, ``ETH`` and ``BTC`` are the built-in
    ones. Its facts (chain, decimals, dust, contract) are an :class:`AssetInfo`. A plain ``str``
    to everything else: compare with ``==``, never ``is``.

    Raises:
        ValueError: the text is not 2 to 16 characters of ``A-Z0-9`` starting with a letter.
    """

    __slots__ = ()

    JOBCOIN: ClassVar[Asset]
    ETH: ClassVar[Asset]
    BTC: ClassVar[Asset]

    def __new__(cls, code: str) -> Asset:
        if isinstance(code, Asset):
            return code
        if not isinstance(code, str) or not _ASSET_CODE.fullmatch(code):
            raise ValueError(f"{code!r} is not an asset code (2-16 of A-Z0-9, starting with a letter)")
        return super().__new__(cls, code)

    @property
    def value(self) -> str:
        """The code as a plain ``str`` (what the database column holds)."""
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Asset({str.__str__(self)!r})"


Asset.JOBCOIN = Asset("JOBCOIN")
Asset.ETH = Asset("ETH")
Asset.BTC = Asset("BTC")


@dataclass(frozen=True, slots=True)
class AssetInfo:
    """Static facts of an asset.

    Attributes:
        asset: the asset's code.
        chain: the kind of chain it lives on (``"jobcoin"``, ``"evm"``, ``"bitcoin"``).
        decimals: base units per coin as a power of ten (8 for jobcoin, 18 for ETH, 6 for USDT).
        unit: the name of the base unit, for messages ("wei").
        dust: the smallest payout in base units: below it a payout would cost more to move
            than it is worth (or a chain would refuse it).
        contract: the token contract's checksummed address (an ERC-20 on an EVM chain), ``None``
            for a chain's native coin.
    """

    asset: Asset
    chain: ChainKind
    decimals: int
    unit: str
    dust: int
    contract: str | None = None

    @property
    def is_token(self) -> bool:
        """Whether the asset is a token contract's rather than the chain's native coin."""
        return self.contract is not None


BUILTIN_ASSETS: dict[Asset, AssetInfo] = {
    # The Jobcoin API speaks decimal strings ("49.5") without a declared precision; we fix
    # 8 decimals (like satoshi) and reject anything finer instead of rounding it away.
    Asset.JOBCOIN: AssetInfo(Asset.JOBCOIN, "jobcoin", 8, "jobcoin base unit", dust=10_000),
    Asset.ETH: AssetInfo(Asset.ETH, "evm", 18, "wei", dust=10**12),
    # 546 satoshi: Bitcoin Core's dust threshold of a P2PKH output at the default 3 sat/vB
    # dust relay fee (policy.cpp GetDustThreshold); a P2WPKH output's is 294, 546 covers both.
    Asset.BTC: AssetInfo(Asset.BTC, "bitcoin", 8, "satoshi", dust=546),
}


class AssetRegistry(Mapping[Asset, AssetInfo]):
    """The assets a deployment knows: the built-in ones plus its configured tokens.

    A read-only mapping ``Asset -> AssetInfo``; :meth:`info` is the lookup with a clear error.

    Args:
        extra: the configured assets (tokens), on top of :data:`BUILTIN_ASSETS`.

    Raises:
        ConfigError: an extra asset reuses a built-in code or appears twice.
    """

    __slots__ = ("_table",)

    def __init__(self, extra: Iterable[AssetInfo] = ()) -> None:
        table = dict(BUILTIN_ASSETS)
        for info in extra:
            if info.asset in table:
                raise ConfigError(f"asset {info.asset} is defined twice (or shadows a built-in asset)")
            table[info.asset] = info
        self._table = table

    def __getitem__(self, asset: Asset | str) -> AssetInfo:
        return self._table[Asset(asset)]

    def __iter__(self) -> Iterator[Asset]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def info(self, asset: Asset | str) -> AssetInfo:
        """The facts of ``asset``.

        Raises:
            InvalidInput: ``asset`` is malformed or not an asset of this deployment.
        """
        try:
            return self._table[Asset(asset)]
        except (KeyError, ValueError):
            raise InvalidInput(f"unknown asset {asset!r}") from None


# The assets of the running process: the built-ins until :func:`register_assets` adds the
# configured tokens (a process configures them once, at start). Asset facts are fixed facts of
# the chain (a token's decimals are its contract's), so a table per process is safe; the
# deployment-specific limits (min/max deposit) live in Settings, not here.
ASSETS: dict[Asset, AssetInfo] = dict(BUILTIN_ASSETS)


def register_assets(registry: Mapping[Asset, AssetInfo]) -> None:
    """Make the configured assets known to :func:`asset_info` (formatting amounts in the API).

    Raises:
        ConfigError: an asset is already known with other facts (two settings disagree).
    """
    for asset, info in registry.items():
        known = ASSETS.get(asset)
        if known is not None and known != info:
            raise ConfigError(f"asset {asset} is already configured with other facts in this process")
        ASSETS[asset] = info


def asset_info(asset: Asset | str) -> AssetInfo:
    """The facts of ``asset`` among the process's known assets (:data:`ASSETS`).

    Raises:
        InvalidInput: the asset is malformed or unknown.
    """
    try:
        return ASSETS[Asset(asset)]
    except (KeyError, ValueError):
        raise InvalidInput(f"unknown asset {asset!r}") from None


def known_asset(asset_id: str) -> AssetInfo | None:
    """The facts of a wallet history's asset id, if this process knows it: an asset code
    (``"ETH"``) or a token contract address (any case) of a configured token; ``None`` for any
    other token (wallet sync records every token it sees, configured or not)."""
    if _ASSET_CODE.fullmatch(asset_id):
        return ASSETS.get(Asset(asset_id))
    lowered = asset_id.lower()
    for info in ASSETS.values():
        if info.contract is not None and info.contract.lower() == lowered:
            return info
    return None


def asset_lock_key(asset: Asset | str) -> int:
    """A stable small integer of ``asset`` for advisory-lock keys (CRC-32 of its code, 0..2**31):
    the same in every process and every release, whatever assets are configured."""
    return zlib.crc32(str(asset).encode("ascii")) & 0x7FFF_FFFF


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
