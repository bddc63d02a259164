"""Exact conversion between whole-coin decimal strings and integer base units."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mixhouse.config import Settings, TokenSettings
from mixhouse.errors import ConfigError, InvalidAmount, InvalidInput
from mixhouse.mixer.runtime import Runtime
from mixhouse.money import (
    ASSETS,
    MAX_BASE_UNITS,
    Asset,
    AssetRegistry,
    asset_info,
    asset_lock_key,
    format_amount,
    known_asset,
    parse_amount,
    percent_of,
    register_assets,
)


@given(st.integers(min_value=1, max_value=10**30), st.sampled_from([8, 18]))
def test_parse_inverts_format(base_units: int, decimals: int) -> None:
    assert parse_amount(format_amount(base_units, decimals), decimals) == base_units


@given(st.integers(min_value=0, max_value=10**30), st.sampled_from([8, 18]))
def test_format_shape(base_units: int, decimals: int) -> None:
    text = format_amount(base_units, decimals)
    whole, _, frac = text.partition(".")
    assert int(whole) == base_units // 10**decimals
    assert len(frac) <= decimals
    assert not frac.endswith("0")
    # Rebuild the value from the digits independently of parse_amount.
    assert int(whole) * 10**decimals + int(frac.ljust(decimals, "0") or "0") == base_units


@pytest.mark.parametrize(
    ("base_units", "decimals", "expected"),
    [
        (4_950_000_000, 8, "49.5"),
        (0, 8, "0"),
        (1, 8, "0.00000001"),
        (100_000_000, 8, "1"),
        (1, 18, "0.000000000000000001"),
        (10**18, 18, "1"),
        (1_230_000_000_000_000_000, 18, "1.23"),
        (-150_000_000, 8, "-1.5"),
    ],
)
def test_format_examples(base_units: int, decimals: int, expected: str) -> None:
    assert format_amount(base_units, decimals) == expected


@pytest.mark.parametrize(
    ("text", "decimals", "expected"),
    [
        ("49.5", 8, 4_950_000_000),
        ("1", 8, 100_000_000),
        ("0.00000001", 8, 1),
        ("0.000000000000000001", 18, 1),
        (".5", 8, 50_000_000),
        ("1.", 8, 100_000_000),
        ("007.10", 8, 710_000_000),
        ("  2.5  ", 18, 2_500_000_000_000_000_000),
        ("1.230000000000000000000", 18, 1_230_000_000_000_000_000),  # trailing zeros are exact
        # More than 28 significant digits: must not be rounded by the decimal context.
        ("999999999999.999999999999999999", 18, 10**30 - 1),
        (
            "123456789012345678901234567890.123456789012345678",
            18,
            123456789012345678901234567890123456789012345678,
        ),
    ],
)
def test_parse_examples(text: str, decimals: int, expected: int) -> None:
    assert parse_amount(text, decimals) == expected


@pytest.mark.parametrize(
    "text",
    ["0", "-1", "1e3", "abc", "", " ", "1.2.3", "+1", "1,5", "NaN", "Infinity", ".", "0.0", "1 000", "0x10"],
)
@pytest.mark.parametrize("decimals", [8, 18])
def test_parse_rejects(text: str, decimals: int) -> None:
    with pytest.raises(InvalidAmount):
        parse_amount(text, decimals)


def test_parse_rejects_over_precise() -> None:
    with pytest.raises(InvalidAmount, match="decimal places"):
        parse_amount("0.123456789", 8)
    with pytest.raises(InvalidAmount, match="decimal places"):
        parse_amount("1.0000000000000000001", 18)
    # The same digits fit with 18 decimals.
    assert parse_amount("0.123456789", 18) == 123_456_789_000_000_000


def test_parse_rejects_too_large() -> None:
    limit_text = format_amount(MAX_BASE_UNITS, 8)
    assert parse_amount(limit_text, 8) == MAX_BASE_UNITS
    with pytest.raises(InvalidAmount, match="too large"):
        parse_amount(format_amount(MAX_BASE_UNITS + 1, 8), 8)


def test_asset_decimals() -> None:
    assert ASSETS[Asset.JOBCOIN].decimals == 8
    assert ASSETS[Asset.ETH].decimals == 18
    assert parse_amount("1", ASSETS[Asset.ETH].decimals) == 10**18


USDT_MAINNET = "0xdAC17F958D2ee523a2206206994597C13D831ec7"


def _usdt(**overrides: object) -> TokenSettings:
    fields: dict[str, object] = {
        "symbol": "USDT",
        "contract": USDT_MAINNET.lower(),
        "decimals": 6,
        "dust": 10_000,
        "min_deposit": 10_000_000,
        "max_deposit": 10**11,
    }
    fields.update(overrides)
    return TokenSettings.model_validate(fields)


def test_assets_are_open_codes() -> None:
    assert Asset("USDT") == "USDT"
    assert Asset("ETH") == Asset.ETH
    assert Asset(Asset.BTC) is Asset.BTC
    assert Asset("USDT").value == "USDT"
    assert type(Asset("USDT").value) is str
    for bad in ("", "eth", "E", "1INCH", "USD T", "USDT\x00", "A" * 17):
        with pytest.raises(ValueError, match="not an asset code"):
            Asset(bad)


def test_configured_token_is_an_asset_with_its_facts() -> None:
    settings = Settings(evm_enabled=True, evm_tokens=[_usdt()])
    registry = settings.assets()
    info = registry.info("USDT")
    assert info.chain == "evm"
    assert info.decimals == 6
    assert info.contract == USDT_MAINNET  # EIP-55 form whatever the case given
    assert info.is_token
    assert not registry.info("ETH").is_token
    assert set(registry) == {Asset.JOBCOIN, Asset.ETH, Asset.BTC, Asset("USDT")}
    assert settings.enabled_assets() == [Asset.JOBCOIN, Asset.ETH, Asset("USDT")]
    assert settings.deposit_limits("USDT") == (10_000_000, 10**11)
    assert settings.deposit_limits("ETH") == (settings.evm_min_deposit, settings.evm_max_deposit)
    with pytest.raises(InvalidInput, match="unknown asset"):
        registry.info("DOGE")
    with pytest.raises(ConfigError):
        settings.deposit_limits("DOGE")
    # Tokens are enabled with their chain.
    assert Asset("USDT") not in Settings(evm_enabled=False, evm_tokens=[_usdt()]).enabled_assets()


def test_token_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "MIXHOUSE_EVM_TOKENS",
        f'[{{"symbol": "USDT", "contract": "{USDT_MAINNET}", "decimals": 6, "dust": 1, '
        '"min_deposit": 1000000, "max_deposit": 1000000000}]',
    )
    assert Settings().assets().info("USDT").decimals == 6


@pytest.mark.parametrize(
    "tokens",
    [
        [_usdt(), _usdt()],  # twice
        [_usdt(symbol="ETH")],  # shadows a built-in
        [_usdt(min_deposit=10, max_deposit=5)],
    ],
)
def test_bad_token_settings_are_refused(tokens: list[TokenSettings]) -> None:
    with pytest.raises((ConfigError, ValidationError)):
        Settings(evm_tokens=tokens)


@pytest.mark.parametrize(
    "fields",
    [{"contract": "0x1234"}, {"decimals": 99}, {"symbol": "usdt"}, {"dust": 0}, {"extra": 1}],
)
def test_malformed_token_entries_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _usdt(**fields)


def test_registering_conflicting_facts_is_refused() -> None:
    # The registry is per process: other tests register their own USDT (another contract), so
    # this one uses a symbol of its own.
    register_assets(AssetRegistry([_usdt(symbol="REGTESTUSD").info()]))
    assert asset_info("REGTESTUSD").decimals == 6
    with pytest.raises(ConfigError):
        register_assets(AssetRegistry([_usdt(symbol="REGTESTUSD", decimals=18).info()]))
    with pytest.raises(InvalidInput):
        asset_info("NOPE")
    # Wallet history names a token by its contract: the same asset as the mixer's USDT.
    known = known_asset(USDT_MAINNET.lower())
    assert known is not None
    assert known.asset == "REGTESTUSD"
    assert known_asset("ETH") == asset_info("ETH")
    assert known_asset("0x6B175474E89094C44Da98b954EedeAC495271d0F") is None  # not configured
    assert known_asset("NOPE") is None


def test_lock_keys_are_stable_and_distinct() -> None:
    # CRC-32 of the code: fixed across processes and releases (advisory lock keys).
    assert asset_lock_key("ETH") == asset_lock_key(Asset.ETH) == 0x2FC0C7CB
    keys = {asset_lock_key(code) for code in ("JOBCOIN", "ETH", "BTC", "USDT", "USDC", "DAI")}
    assert len(keys) == 6
    assert all(0 <= key < 2**31 for key in keys)


@pytest.mark.parametrize(
    ("amount", "bps", "expected"),
    [
        (10_000, 100, 100),
        (9_999, 100, 99),  # 99.99 rounds down
        (1, 9_999, 0),  # 0.9999 rounds down
        (199, 50, 0),  # 0.995 rounds down
        (200, 50, 1),
        (0, 250, 0),
        (12_345, 0, 0),
        (12_345, 10_000, 12_345),
        (10**24 + 7, 1, 10**20),  # 10**20 + 0.0007
    ],
)
def test_percent_of_examples(amount: int, bps: int, expected: int) -> None:
    assert percent_of(amount, bps) == expected


@given(st.integers(min_value=0, max_value=10**30), st.integers(min_value=0, max_value=10_000))
def test_percent_of_rounds_down(amount: int, bps: int) -> None:
    fee = percent_of(amount, bps)
    # fee is the largest integer with fee * 10_000 <= amount * bps.
    assert fee * 10_000 <= amount * bps < (fee + 1) * 10_000
    assert 0 <= fee <= amount


@pytest.mark.parametrize(("amount", "bps"), [(-1, 100), (100, -1)])
def test_percent_of_rejects_negative(amount: int, bps: int) -> None:
    with pytest.raises(InvalidAmount):
        percent_of(amount, bps)


def test_the_runtime_builds_its_asset_registry_once_per_settings() -> None:
    settings = Settings(evm_enabled=True, evm_tokens=[_usdt()])
    rt = Runtime(settings, engine=None, adapters={}, screener=None)  # type: ignore[arg-type]
    first = rt.assets
    assert rt.assets is first  # cached, not rebuilt per call
    assert first.info("USDT").decimals == 6
    rt.settings = Settings(evm_enabled=False)
    assert rt.assets is not first  # other settings: their own registry
