"""Secrets from files (``MIXHOUSE_<NAME>_FILE``) and the production refusals of weak secrets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mixhouse.config import DEV_MNEMONIC, Settings
from mixhouse.errors import ConfigError

# A valid BIP-39 phrase (BIP-39 test vector "abandon ... about"), not the development one.
GOOD_MNEMONIC = "abandon " * 11 + "about"
GOOD_KEY = "k" * 32


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:

    for name in list(os.environ):
        if name.upper().startswith("MIXHOUSE_"):
            monkeypatch.delenv(name)


def _production(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "production",
        "database_url": "postgresql://db/mixhouse",
        "admin_api_key": GOOD_KEY,
        "jobcoin_address_secret": "s" * 40,
    }
    values.update(overrides)
    return Settings(**values)


def test_secret_from_file_strips_one_trailing_newline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "admin"
    secret.write_text("from-a-file \n\n", encoding="utf-8")
    monkeypatch.setenv("MIXHOUSE_ADMIN_API_KEY_FILE", str(secret))
    assert Settings().admin_api_key.get_secret_value() == "from-a-file \n"
    secret.write_text("crlf\r\n", encoding="utf-8")
    assert Settings().admin_api_key.get_secret_value() == "crlf"


def test_every_secret_field_has_a_file_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["admin_api_key", "jobcoin_address_secret", "evm_mnemonic", "bitcoin_mnemonic",
             "bitcoin_rpc_password", "audit_checkpoint_key"]  # fmt: skip
    for name in names:
        path = tmp_path / name
        path.write_text(f"value of {name}\n", encoding="utf-8")
        monkeypatch.setenv(f"MIXHOUSE_{name.upper()}_FILE", str(path))
    settings = Settings()
    for name in names:
        assert getattr(settings, name).get_secret_value() == f"value of {name}"


def test_variable_and_file_together_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m"
    path.write_text(GOOD_MNEMONIC, encoding="utf-8")
    monkeypatch.setenv("MIXHOUSE_EVM_MNEMONIC_FILE", str(path))
    monkeypatch.setenv("MIXHOUSE_EVM_MNEMONIC", GOOD_MNEMONIC)
    with pytest.raises(ConfigError, match="MIXHOUSE_EVM_MNEMONIC or MIXHOUSE_EVM_MNEMONIC_FILE, not both"):
        Settings()


def test_unreadable_file_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXHOUSE_ADMIN_API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="MIXHOUSE_ADMIN_API_KEY_FILE: cannot read"):
        Settings()


def test_a_keyword_argument_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "k"
    path.write_text("file", encoding="utf-8")
    monkeypatch.setenv("MIXHOUSE_ADMIN_API_KEY_FILE", str(path))
    assert Settings(admin_api_key="kwarg").admin_api_key.get_secret_value() == "kwarg"


def test_production_accepts_strong_secrets() -> None:
    settings = _production(
        evm_enabled=True, evm_mnemonic=GOOD_MNEMONIC, bitcoin_enabled=True, bitcoin_mnemonic=GOOD_MNEMONIC,
        bitcoin_rpc_password="p" * 16, audit_checkpoint_key="a" * 64,
    )  # fmt: skip
    assert settings.environment == "production"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"admin_api_key": "dev-admin-key-change-me"}, "set MIXHOUSE_ADMIN_API_KEY: the development value"),
        ({"admin_api_key": "x"}, "MIXHOUSE_ADMIN_API_KEY is too short for production"),
        ({"admin_api_key": "x" * 31}, "MIXHOUSE_ADMIN_API_KEY is too short"),
        (
            {"jobcoin_address_secret": "dev-address-secret-change-me"},
            "MIXHOUSE_JOBCOIN_ADDRESS_SECRET: the development",
        ),
        ({"jobcoin_address_secret": "tiny-secret"}, "MIXHOUSE_JOBCOIN_ADDRESS_SECRET is too short"),
        ({"audit_checkpoint_key": "ab" * 8}, "MIXHOUSE_AUDIT_CHECKPOINT_KEY is too short"),
        ({"evm_enabled": True}, "set MIXHOUSE_EVM_MNEMONIC: the public development mnemonic"),
        ({"evm_enabled": True, "evm_mnemonic": "  ".join(DEV_MNEMONIC.split())}, "MIXHOUSE_EVM_MNEMONIC: the public"),
        ({"evm_enabled": True, "evm_mnemonic": "abandon " * 12}, "MIXHOUSE_EVM_MNEMONIC is not a valid BIP-39"),
        ({"bitcoin_enabled": True}, "set MIXHOUSE_BITCOIN_MNEMONIC: the public development"),
        ({"bitcoin_enabled": True, "bitcoin_mnemonic": "not words at all"}, "MIXHOUSE_BITCOIN_MNEMONIC is not a valid"),
        (
            {"bitcoin_enabled": True, "bitcoin_mnemonic": GOOD_MNEMONIC, "bitcoin_rpc_password": "pw"},
            "MIXHOUSE_BITCOIN_RPC_PASSWORD is too short",
        ),
    ],
)
def test_production_refuses_weak_secrets_naming_the_setting_not_the_value(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _production(**overrides)
    for value in overrides.values():
        if isinstance(value, str) and len(value) > 3:
            assert value not in str(info.value)


def test_development_keeps_its_defaults() -> None:
    settings = Settings(evm_enabled=True, bitcoin_enabled=True, admin_api_key="x")
    assert settings.evm_mnemonic.get_secret_value() == DEV_MNEMONIC


def test_the_pkcs11_signer_takes_its_pin_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin = tmp_path / "pin"
    pin.write_text("1234-token-pin\n", encoding="utf-8")
    monkeypatch.setenv("MIXHOUSE_SIGNER", "pkcs11")
    monkeypatch.setenv("MIXHOUSE_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
    monkeypatch.setenv("MIXHOUSE_PKCS11_TOKEN_LABEL", "mixhouse")
    monkeypatch.setenv("MIXHOUSE_PKCS11_PIN_FILE", str(pin))
    settings = Settings()
    assert settings.pkcs11_pin is not None
    assert settings.pkcs11_pin.get_secret_value() == "1234-token-pin"
    monkeypatch.delenv("MIXHOUSE_PKCS11_PIN_FILE")
    with pytest.raises(ConfigError, match="MIXHOUSE_SIGNER=pkcs11 needs MIXHOUSE_PKCS11_PIN"):
        Settings()


def test_production_with_an_hsm_does_not_ask_for_mnemonics() -> None:
    settings = _production(
        evm_enabled=True, bitcoin_enabled=True, signer="pkcs11", pkcs11_module="/lib/p11.so",
        pkcs11_token_label="t", pkcs11_pin="pin",
    )  # fmt: skip
    assert settings.signer == "pkcs11"
