"""The whole-suite secret grep finds each kind of test secret, in each form, and nothing else."""

from __future__ import annotations

import logging

import pytest
from embit import ec  # type: ignore[import-untyped]
from embit.networks import NETWORKS  # type: ignore[import-untyped]

from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.keys.hd import POOL_PATH, HdKeyring, deposit_path
from tests.secret_grep import TEST_MNEMONICS, SecretGrep


@pytest.fixture(scope="module")
def grep() -> SecretGrep:
    return SecretGrep.for_test_settings()


def _kinds(grep: SecretGrep, text: str) -> list[str]:
    grep.leaks.clear()
    grep.check(text, where="t", section="s")
    return [leak.kind for leak in grep.leaks]


def test_finds_every_form_of_a_test_secret(grep: SecretGrep) -> None:
    eth = HdKeyring(TEST_MNEMONICS[0]).private_key(deposit_path(3)).hex()
    pool = HdKeyring(TEST_MNEMONICS[1]).private_key(POOL_PATH).hex()
    btc = Bip84Keyring(TEST_MNEMONICS[2], "regtest").private_key(1, 7)
    wif = ec.PrivateKey(btc).wif(NETWORKS["regtest"])
    assert _kinds(grep, f"signing with 0x{eth}") == ["eth private key (hex)"]
    assert _kinds(grep, f"KEY={pool.upper()};") == ["eth private key (hex)"]
    assert _kinds(grep, f"raw 00ff{btc.hex()}00ff") == ["btc private key (hex)"]  # inside a longer run
    assert _kinds(grep, f"wif: {wif}") == ["btc private key (wif)"]
    assert _kinds(grep, f"mnemonic={TEST_MNEMONICS[3]!r}") == ["mnemonic"]


def test_finds_nothing_in_public_data(grep: SecretGrep) -> None:
    keyring = HdKeyring(TEST_MNEMONICS[0])
    public = keyring.private_key(deposit_path(0))  # its public key and a txid-like hash are fine
    from mixhouse.keys.signer import compressed_public_key  # noqa: PLC0415

    text = f"pubkey {compressed_public_key(public).hex()} txid 0x{'ab' * 32} mnemonic=*** words: test junk"
    assert _kinds(grep, text) == []


def test_a_captured_log_line_reaches_the_hook(caplog: pytest.LogCaptureFixture, grep: SecretGrep) -> None:
    # What conftest's hook reads: the captured log text of a test.
    caplog.set_level(logging.INFO)
    logging.getLogger("mixhouse.test").info("payout signed by key ref %s", deposit_path(1))
    assert "payout signed" in caplog.text
    assert _kinds(grep, caplog.text) == []
