"""The encrypted keystore (mixhouse.keys.keystore): Argon2id + ChaCha20-Poly1305 over the
mnemonics, a versioned JSON file written atomically with mode 0600, wrong passphrases and
tampered files refused, and the settings that make the software signer take its seeds from it."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from mixhouse.app.build import build_adapters
from mixhouse.chains.bitcoin.adapter import BitcoinAdapter
from mixhouse.chains.evm.adapter import EvmAdapter
from mixhouse.config import DEV_MNEMONIC, Settings
from mixhouse.errors import ConfigError
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.keys.hd import HdKeyring
from mixhouse.keys.keystore import (
    RFC9106_SECOND,
    KdfParams,
    KeystoreError,
    KeystoreExists,
    Mnemonics,
    WrongPassphrase,
    change_passphrase,
    create_keystore,
    fresh_mnemonic,
    open_keystore,
    software_mnemonics,
)
from mixhouse.money import Asset

# BIP-39 test vectors (trezor/python-mnemonic vectors.json), not the development phrase.
EVM_WORDS = "legal winner thank year wave sausage worth useful legal winner thank yellow"
BTC_WORDS = "letter advice cage absurd amount doctor acoustic avoid letter advice cage above"
PASSPHRASE = "correct horse battery staple 42"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("MIXHOUSE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def keystore(tmp_path: Path) -> Path:
    path = tmp_path / "keystore.json"
    create_keystore(path, Mnemonics(evm=EVM_WORDS, bitcoin=BTC_WORDS), PASSPHRASE)
    return path


def _document(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def _rewrite(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document), encoding="utf-8")


def test_round_trip_file_format_and_permissions(keystore: Path) -> None:
    mnemonics = open_keystore(keystore, PASSPHRASE)
    assert (mnemonics.evm, mnemonics.bitcoin) == (EVM_WORDS, BTC_WORDS)
    assert EVM_WORDS not in repr(mnemonics)
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    raw = keystore.read_bytes()
    for word in {*EVM_WORDS.split(), *BTC_WORDS.split()}:
        assert word.encode() not in raw
    document = _document(keystore)
    assert document["format"] == "mixhouse-keystore"
    assert document["version"] == 1
    assert document["kdf"] == {
        "name": "argon2id",
        "argon2_version": 19,
        "time_cost": 3,
        "memory_kib": 65536,
        "parallelism": 4,
        "salt": document["kdf"]["salt"],
    }
    assert len(base64.b64decode(document["kdf"]["salt"])) == 16
    assert document["cipher"]["name"] == "chacha20-poly1305"
    assert len(base64.b64decode(document["cipher"]["nonce"])) == 12
    # Nothing else lies around the directory (the temporary file was renamed or removed).
    assert [p.name for p in keystore.parent.iterdir()] == [keystore.name]


def test_two_keystores_of_the_same_phrases_share_no_salt_nonce_or_ciphertext(tmp_path: Path) -> None:
    mnemonics = Mnemonics(evm=EVM_WORDS, bitcoin=BTC_WORDS)
    create_keystore(tmp_path / "a", mnemonics, PASSPHRASE)
    create_keystore(tmp_path / "b", mnemonics, PASSPHRASE)
    a, b = _document(tmp_path / "a"), _document(tmp_path / "b")
    assert a["kdf"]["salt"] != b["kdf"]["salt"]
    assert a["cipher"]["nonce"] != b["cipher"]["nonce"]
    assert a["ciphertext"] != b["ciphertext"]


def test_a_wrong_passphrase_is_a_clear_error(keystore: Path) -> None:
    with pytest.raises(WrongPassphrase, match="wrong keystore passphrase, or the keystore file was altered"):
        open_keystore(keystore, PASSPHRASE + "!")
    with pytest.raises(WrongPassphrase):
        open_keystore(keystore, PASSPHRASE.upper())


def _flip_ciphertext(document: dict[str, Any]) -> None:
    data = bytearray(base64.b64decode(document["ciphertext"]))
    data[5] ^= 0x01
    document["ciphertext"] = base64.b64encode(bytes(data)).decode()


def _other_salt(document: dict[str, Any]) -> None:
    document["kdf"]["salt"] = base64.b64encode(b"\x00" * 16).decode()


def _other_nonce(document: dict[str, Any]) -> None:
    document["cipher"]["nonce"] = base64.b64encode(b"\x00" * 12).decode()


def _more_passes(document: dict[str, Any]) -> None:
    document["kdf"]["time_cost"] = 4


def _extra_header_field(document: dict[str, Any]) -> None:
    document["note"] = "added by someone"


def _truncate(document: dict[str, Any]) -> None:
    document["ciphertext"] = base64.b64encode(base64.b64decode(document["ciphertext"])[:-1]).decode()


@pytest.mark.parametrize(
    "tamper", [_flip_ciphertext, _other_salt, _other_nonce, _more_passes, _extra_header_field, _truncate]
)
def test_a_tampered_file_is_refused(keystore: Path, tamper: Any) -> None:
    document = _document(keystore)
    tamper(document)
    _rewrite(keystore, document)
    with pytest.raises(WrongPassphrase):
        open_keystore(keystore, PASSPHRASE)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=2), "keystore version 2 is not supported"),
        (lambda d: d.update(format="other"), "not a Mixhouse keystore"),
        (lambda d: d["kdf"].update(name="scrypt"), "KDF is not argon2id"),
        (lambda d: d["cipher"].update(name="aes-256-gcm"), "cipher is not chacha20-poly1305"),
        # A planted file must not make the process allocate 64 GiB before the tag is checked.
        (lambda d: d["kdf"].update(memory_kib=64 * 1024 * 1024), "argon2id memory must be in"),
        (lambda d: d["kdf"].update(time_cost="3"), "not integers"),
        (lambda d: d["cipher"].update(nonce="%%%"), "nonce is not valid base64"),
        (lambda d: d["cipher"].update(nonce=base64.b64encode(b"x" * 8).decode()), "wrong length"),
    ],
)
def test_a_malformed_or_unknown_file_names_the_problem(keystore: Path, change: Any, message: str) -> None:
    document = _document(keystore)
    change(document)
    _rewrite(keystore, document)
    with pytest.raises(KeystoreError, match=message) as info:
        open_keystore(keystore, PASSPHRASE)
    assert not isinstance(info.value, WrongPassphrase)


def test_missing_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="cannot read keystore"):
        open_keystore(tmp_path / "absent.json", PASSPHRASE)
    (tmp_path / "junk").write_bytes(b"\xff\x00not json")
    with pytest.raises(KeystoreError, match="not JSON"):
        open_keystore(tmp_path / "junk", PASSPHRASE)


def test_an_existing_keystore_is_never_overwritten(keystore: Path) -> None:
    before = keystore.read_bytes()
    with pytest.raises(KeystoreExists, match="refusing to overwrite"):
        create_keystore(keystore, Mnemonics(evm=BTC_WORDS, bitcoin=EVM_WORDS), "another passphrase")
    assert keystore.read_bytes() == before
    assert [p.name for p in keystore.parent.iterdir()] == [keystore.name]


def test_two_creators_at_once_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "ks.json"
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def create(words: str) -> None:
        barrier.wait()
        try:
            create_keystore(path, Mnemonics(evm=words, bitcoin=words), PASSPHRASE)
            outcomes.append(words)
        except KeystoreExists:
            outcomes.append("exists")

    candidates = [EVM_WORDS, BTC_WORDS, fresh_mnemonic(12), fresh_mnemonic(24)]
    threads = [threading.Thread(target=create, args=(words,)) for words in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    winners = [o for o in outcomes if o != "exists"]
    assert len(outcomes) == 4
    assert len(winners) == 1
    assert open_keystore(path, PASSPHRASE).evm == winners[0]


def test_weak_kdf_parameters_and_bad_inputs_are_refused_at_creation(tmp_path: Path) -> None:
    mnemonics = Mnemonics(evm=EVM_WORDS, bitcoin=BTC_WORDS)
    with pytest.raises(KeystoreError, match="weaker than RFC 9106"):
        create_keystore(tmp_path / "k", mnemonics, PASSPHRASE, kdf=KdfParams(time_cost=1, memory_kib=65536))
    with pytest.raises(KeystoreError, match="weaker than RFC 9106"):
        create_keystore(tmp_path / "k", mnemonics, PASSPHRASE, kdf=KdfParams(time_cost=3, memory_kib=32768))
    with pytest.raises(KeystoreError, match="passphrase is empty"):
        create_keystore(tmp_path / "k", mnemonics, "")
    with pytest.raises(KeystoreError, match="evm mnemonic is not a valid BIP-39") as info:
        create_keystore(tmp_path / "k", Mnemonics(evm="abandon " * 12, bitcoin=BTC_WORDS), PASSPHRASE)
    assert "abandon" not in str(info.value)
    assert not (tmp_path / "k").exists()
    # Stronger than the defaults is fine, and the file says what was used.
    strong = KdfParams(time_cost=4, memory_kib=128 * 1024, parallelism=2)
    create_keystore(tmp_path / "strong", mnemonics, PASSPHRASE, kdf=strong)
    assert _document(tmp_path / "strong")["kdf"]["memory_kib"] == 128 * 1024
    assert open_keystore(tmp_path / "strong", PASSPHRASE).bitcoin == BTC_WORDS
    assert KdfParams(3, 65536, 4) == RFC9106_SECOND


def test_the_passphrase_is_nfc_normalised(tmp_path: Path) -> None:
    composed = "caf\u00e9 au lait, sans sucre"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    create_keystore(tmp_path / "k", Mnemonics(evm=EVM_WORDS, bitcoin=BTC_WORDS), composed)
    assert open_keystore(tmp_path / "k", decomposed).evm == EVM_WORDS


def test_change_passphrase_re_encrypts(keystore: Path) -> None:
    old = _document(keystore)
    change_passphrase(keystore, PASSPHRASE, "a new and longer passphrase")
    new = _document(keystore)
    assert new["kdf"]["salt"] != old["kdf"]["salt"]
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    with pytest.raises(WrongPassphrase):
        open_keystore(keystore, PASSPHRASE)
    assert open_keystore(keystore, "a new and longer passphrase").bitcoin == BTC_WORDS
    with pytest.raises(WrongPassphrase):
        change_passphrase(keystore, PASSPHRASE, "whatever it is")


def test_fresh_mnemonics_are_valid_and_distinct() -> None:
    phrases = {fresh_mnemonic() for _ in range(20)}
    assert len(phrases) == 20
    for phrase in phrases:
        assert len(phrase.split()) == 24
        Mnemonics(evm=phrase, bitcoin=phrase).check()
    assert len(fresh_mnemonic(12).split()) == 12
    with pytest.raises(ValueError, match="12, 15, 18, 21 or 24"):
        fresh_mnemonic(13)


# -- settings and the software signer ----------------------------------------------------


def test_the_signer_takes_its_seeds_from_the_keystore(
    keystore: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n", encoding="utf-8")
    monkeypatch.setenv("MIXHOUSE_KEYSTORE_PATH", str(keystore))
    monkeypatch.setenv("MIXHOUSE_KEYSTORE_PASSPHRASE_FILE", str(passphrase_file))
    settings = Settings(evm_enabled=True, bitcoin_enabled=True, jobcoin_enabled=False)
    assert software_mnemonics(settings) == Mnemonics(evm=EVM_WORDS, bitcoin=BTC_WORDS)
    adapters = build_adapters(settings)
    evm, btc = adapters[Asset.ETH], adapters[Asset.BTC]
    assert isinstance(evm, EvmAdapter)
    assert isinstance(btc, BitcoinAdapter)
    assert evm.pool_address == HdKeyring(EVM_WORDS).pool_address()
    assert evm.pool_address != HdKeyring(DEV_MNEMONIC).pool_address()
    keyring = Bip84Keyring(BTC_WORDS, "regtest")
    assert btc._signer.public_key(keyring.path(0, 3)) == keyring.public_key(0, 3)


def test_without_a_keystore_the_settings_mnemonics_are_used() -> None:
    settings = Settings(evm_mnemonic=EVM_WORDS)
    assert software_mnemonics(settings) == Mnemonics(evm=EVM_WORDS, bitcoin=DEV_MNEMONIC)


def test_keystore_and_environment_mnemonics_together_are_refused(keystore: Path) -> None:
    with pytest.raises(ConfigError, match="KEYSTORE_PATH or MIXHOUSE_EVM_MNEMONIC, not both"):
        Settings(keystore_path=keystore, evm_mnemonic=EVM_WORDS)
    with pytest.raises(ConfigError, match="KEYSTORE_PATH or MIXHOUSE_BITCOIN_MNEMONIC, not both"):
        Settings(keystore_path=keystore, bitcoin_mnemonic=BTC_WORDS)


def test_no_passphrase_and_no_terminal_is_a_clear_error(keystore: Path) -> None:
    # pytest's stdin is not a terminal.
    with pytest.raises(ConfigError, match="MIXHOUSE_KEYSTORE_PASSPHRASE_FILE or run on a terminal"):
        software_mnemonics(Settings(keystore_path=keystore))


def test_the_passphrase_can_be_typed_at_a_prompt(keystore: Path) -> None:
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return PASSPHRASE

    assert software_mnemonics(Settings(keystore_path=keystore), prompt=prompt).evm == EVM_WORDS
    assert asked == [f"Passphrase of keystore {keystore}: "]
    with pytest.raises(WrongPassphrase):
        software_mnemonics(Settings(keystore_path=keystore), prompt=lambda _: "not it")


def _production(**values: Any) -> Settings:
    return Settings(
        environment="production",
        database_url="postgresql://db/mixhouse",
        admin_api_key="k" * 32,
        jobcoin_address_secret="s" * 40,
        **values,
    )


def test_production_refuses_a_short_passphrase(tmp_path: Path) -> None:
    short = "eleven char"
    with pytest.raises(ConfigError, match="KEYSTORE_PASSPHRASE is too short for production: at least 16") as info:
        _production(keystore_path=tmp_path / "k", keystore_passphrase=short)
    assert short not in str(info.value)
    create_keystore(tmp_path / "k", Mnemonics(evm=EVM_WORDS, bitcoin=BTC_WORDS), short)
    # Typed at the prompt: refused too, before the file is even opened.
    with pytest.raises(ConfigError, match="too short for production"):
        software_mnemonics(_production(keystore_path=tmp_path / "k"), prompt=lambda _: short)
    # Development takes it.
    assert software_mnemonics(Settings(keystore_path=tmp_path / "k", keystore_passphrase=short)).evm == EVM_WORDS


def test_production_with_a_keystore_does_not_ask_for_environment_mnemonics(keystore: Path) -> None:
    settings = _production(
        evm_enabled=True, bitcoin_enabled=True, keystore_path=keystore, keystore_passphrase=PASSPHRASE
    )  # fmt: skip
    assert software_mnemonics(settings).bitcoin == BTC_WORDS


def test_production_refuses_the_development_mnemonic_in_a_keystore(tmp_path: Path) -> None:
    create_keystore(tmp_path / "dev", Mnemonics(evm=DEV_MNEMONIC, bitcoin=BTC_WORDS), PASSPHRASE)
    settings = _production(evm_enabled=True, keystore_path=tmp_path / "dev", keystore_passphrase=PASSPHRASE)
    with pytest.raises(ConfigError, match="public development mnemonic"):
        software_mnemonics(settings)
