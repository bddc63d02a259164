"""``mixhouse keys init|unlock|export-xpub|passphrase`` (mixhouse.keys.cli) through Typer's
CliRunner and as a real subprocess: only public keys printed unless --show-mnemonic, imports
from files, wrong passphrases and existing keystores refused with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixhouse.cli import app
from mixhouse.keys.hd import HdKeyring
from mixhouse.keys.keystore import Mnemonics, create_keystore, open_keystore
from mixhouse.keys.xpubs import fingerprint, public_keys

# BIP-84's test vector seed, with its published account key and first receive address.
VECTOR_WORDS = "abandon " * 11 + "about"
VECTOR_ZPUB = (
    "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs"
)
VECTOR_FINGERPRINT = "73c5da0a"
EVM_WORDS = "legal winner thank year wave sausage worth useful legal winner thank yellow"
PASSPHRASE = "a long enough keystore passphrase"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("MIXHOUSE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def passphrase_file(tmp_path: Path) -> Path:
    path = tmp_path / "passphrase"
    path.write_text(PASSPHRASE + "\n", encoding="utf-8")
    return path


def _mixhouse(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m mixhouse ARGS`` in a real process with ``env`` and no stdin (so no prompt)."""
    return subprocess.run(
        [sys.executable, "-m", "mixhouse", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _assert_no_phrase(text: str, mnemonics: Mnemonics) -> None:
    for phrase in (mnemonics.evm, mnemonics.bitcoin):
        words = phrase.split()
        # No run of four words of a phrase: a partial leak is a leak too.
        for i in range(len(words) - 3):
            assert " ".join(words[i : i + 4]) not in text


def test_init_makes_fresh_phrases_and_prints_only_public_keys(
    runner: CliRunner, tmp_path: Path, passphrase_file: Path
) -> None:
    path = tmp_path / "ks.json"
    result = runner.invoke(app, ["keys", "init", "--keystore", str(path), "--passphrase-file", str(passphrase_file)])
    assert result.exit_code == 0, result.output
    mnemonics = open_keystore(path, PASSPHRASE)
    assert len(mnemonics.evm.split()) == 24
    assert mnemonics.evm != mnemonics.bitcoin
    _assert_no_phrase(result.output, mnemonics)
    public = public_keys(mnemonics, "regtest")
    assert public.evm_pool_address in result.output
    assert public.bitcoin_zpub in result.output
    assert public.bitcoin_zpub.startswith("vpub")  # SLIP-132 on the test networks
    assert public.bitcoin_receive_descriptor in result.output
    assert f"EVM seed fingerprint:      {fingerprint(mnemonics.evm)}" in result.output
    assert "--show-mnemonic" in result.output
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_init_imports_phrases_from_files_and_export_matches_bip84(
    runner: CliRunner, tmp_path: Path, passphrase_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIXHOUSE_BITCOIN_NETWORK", "mainnet")
    monkeypatch.setenv("MIXHOUSE_KEYSTORE_PATH", str(tmp_path / "ks.json"))
    monkeypatch.setenv("MIXHOUSE_KEYSTORE_PASSPHRASE_FILE", str(passphrase_file))
    (tmp_path / "evm").write_text(f"  {EVM_WORDS}\n", encoding="utf-8")
    (tmp_path / "btc").write_text(VECTOR_WORDS.replace(" ", "\n") + "\n", encoding="utf-8")
    result = runner.invoke(
        app,
        ["keys", "init", "--evm-mnemonic-file", str(tmp_path / "evm"),
         "--bitcoin-mnemonic-file", str(tmp_path / "btc")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert open_keystore(tmp_path / "ks.json", PASSPHRASE) == Mnemonics(evm=EVM_WORDS, bitcoin=VECTOR_WORDS.strip())
    assert VECTOR_ZPUB in result.output
    assert "abandon" not in result.output

    exported = runner.invoke(app, ["keys", "export-xpub", "--json"])
    assert exported.exit_code == 0, exported.output
    body = json.loads(exported.output)
    assert body["bitcoin_zpub"] == VECTOR_ZPUB
    assert body["bitcoin_fingerprint"] == VECTOR_FINGERPRINT
    assert body["bitcoin_xpub"].startswith("xpub")
    assert body["bitcoin_receive_descriptor"].startswith(f"wpkh([{VECTOR_FINGERPRINT}/84h/0h/0h]xpub")
    assert body["evm_pool_address"] == HdKeyring(EVM_WORDS).pool_address()
    assert body["evm_deposit_xpub"].startswith("xpub")

    unlocked = runner.invoke(app, ["keys", "unlock"])
    assert unlocked.exit_code == 0, unlocked.output
    assert "keystore unlocked" in unlocked.output
    assert f"Bitcoin seed fingerprint: {VECTOR_FINGERPRINT}" in unlocked.output


def test_show_mnemonic_prints_the_phrases_for_the_backup(
    runner: CliRunner, tmp_path: Path, passphrase_file: Path
) -> None:
    path = tmp_path / "ks.json"
    result = runner.invoke(
        app,
        ["keys", "init", "--keystore", str(path), "--passphrase-file", str(passphrase_file),
         "--show-mnemonic", "--words", "12"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    mnemonics = open_keystore(path, PASSPHRASE)
    assert len(mnemonics.bitcoin.split()) == 12
    assert f"EVM mnemonic:     {mnemonics.evm}" in result.output
    assert f"Bitcoin mnemonic: {mnemonics.bitcoin}" in result.output


def test_init_refuses_an_existing_keystore_and_a_bad_phrase(
    runner: CliRunner, tmp_path: Path, passphrase_file: Path
) -> None:
    path = tmp_path / "ks.json"
    create_keystore(path, Mnemonics(evm=EVM_WORDS, bitcoin=VECTOR_WORDS), PASSPHRASE)
    before = path.read_bytes()
    result = runner.invoke(app, ["keys", "init", "--keystore", str(path), "--passphrase-file", str(passphrase_file)])
    assert result.exit_code == 2
    assert "refusing to overwrite" in result.output
    assert path.read_bytes() == before

    bad = "abandon ability able about above absent absorb abstract absurd abuse access accident"
    (tmp_path / "bad").write_text(bad, encoding="utf-8")
    result = runner.invoke(
        app,
        ["keys", "init", "--keystore", str(tmp_path / "other.json"), "--passphrase-file", str(passphrase_file),
         "--evm-mnemonic-file", str(tmp_path / "bad")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "evm mnemonic is not a valid BIP-39 phrase" in result.output
    assert "absorb" not in result.output
    assert not (tmp_path / "other.json").exists()


def test_wrong_passphrase_and_missing_keystore_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "ks.json"
    create_keystore(path, Mnemonics(evm=EVM_WORDS, bitcoin=VECTOR_WORDS), PASSPHRASE)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase at all\n", encoding="utf-8")
    for command in ("unlock", "export-xpub"):
        result = runner.invoke(app, ["keys", command, "--keystore", str(path), "--passphrase-file", str(wrong)])
        assert result.exit_code == 2
        assert "wrong keystore passphrase" in result.output
        assert "not the passphrase" not in result.output
    result = runner.invoke(app, ["keys", "unlock"])
    assert result.exit_code == 2
    assert "give --keystore PATH or set MIXHOUSE_KEYSTORE_PATH" in result.output


def test_passphrases_are_asked_at_a_prompt_with_confirmation(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "ks.json"
    mismatch = runner.invoke(app, ["keys", "init", "--keystore", str(path)], input="first one typed\nsecond\n")
    assert not path.exists()
    assert "do not match" in mismatch.output
    typed = "typed at the prompt, twice"
    result = runner.invoke(app, ["keys", "init", "--keystore", str(path)], input=f"{typed}\n{typed}\n")
    assert result.exit_code == 0, result.output
    assert typed not in result.output  # hidden input: not echoed
    result = runner.invoke(app, ["keys", "unlock", "--keystore", str(path)], input=f"{typed}\n")
    assert result.exit_code == 0, result.output
    assert "keystore unlocked" in result.output

    new = tmp_path / "new"
    new.write_text("the replacement passphrase\n", encoding="utf-8")
    changed = runner.invoke(
        app, ["keys", "passphrase", "--keystore", str(path), "--new-passphrase-file", str(new)], input=f"{typed}\n"
    )
    assert changed.exit_code == 0, changed.output
    assert open_keystore(path, "the replacement passphrase").evm


def test_production_refuses_a_short_passphrase_at_init(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIXHOUSE_ENVIRONMENT", "production")
    monkeypatch.setenv("MIXHOUSE_DATABASE_URL", "postgresql://db/mixhouse")
    monkeypatch.setenv("MIXHOUSE_ADMIN_API_KEY", "k" * 32)
    monkeypatch.setenv("MIXHOUSE_JOBCOIN_ADDRESS_SECRET", "s" * 32)
    short = tmp_path / "short"
    short.write_text("too short\n", encoding="utf-8")
    path = tmp_path / "ks.json"
    result = runner.invoke(app, ["keys", "init", "--keystore", str(path), "--passphrase-file", str(short)])
    assert result.exit_code == 2
    assert "too short for production: at least 16 characters" in result.output
    assert not path.exists()


def test_export_without_a_keystore_reads_the_settings_mnemonics(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIXHOUSE_BITCOIN_MNEMONIC", VECTOR_WORDS)
    monkeypatch.setenv("MIXHOUSE_BITCOIN_NETWORK", "mainnet")
    result = runner.invoke(app, ["keys", "export-xpub"])
    assert result.exit_code == 0, result.output
    assert VECTOR_ZPUB in result.output


def test_the_installed_command_in_a_subprocess(tmp_path: Path, passphrase_file: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MIXHOUSE_")}
    env |= {
        "MIXHOUSE_KEYSTORE_PATH": str(tmp_path / "ks.json"),
        "MIXHOUSE_KEYSTORE_PASSPHRASE_FILE": str(passphrase_file),
        "MIXHOUSE_BITCOIN_NETWORK": "testnet",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return _mixhouse(env, "keys", *args)

    created = run("init")
    assert created.returncode == 0, created.stderr
    mnemonics = open_keystore(tmp_path / "ks.json", PASSPHRASE)
    _assert_no_phrase(created.stdout + created.stderr, mnemonics)
    unlocked = run("unlock")
    assert unlocked.returncode == 0, unlocked.stderr
    assert fingerprint(mnemonics.bitcoin) in unlocked.stdout
    exported = run("export-xpub", "--json")
    assert json.loads(exported.stdout)["bitcoin_zpub"] == public_keys(mnemonics, "testnet").bitcoin_zpub
    _assert_no_phrase(unlocked.stdout + unlocked.stderr + exported.stdout + exported.stderr, mnemonics)
    again = run("init")
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr


def test_a_mixhouse_process_takes_its_keys_from_the_keystore(
    tmp_path: Path, passphrase_file: Path, database_url: str
) -> None:
    """`mixhouse mix create ETH ...` in a process of its own: the deposit address is the keystore
    seed's first deposit key; a wrong passphrase stops the command with a clear error."""
    path = tmp_path / "ks.json"
    create_keystore(path, Mnemonics(evm=EVM_WORDS, bitcoin=VECTOR_WORDS), PASSPHRASE)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MIXHOUSE_")}
    env |= {
        "MIXHOUSE_DATABASE_URL": database_url,
        "MIXHOUSE_JOBCOIN_ENABLED": "false",
        "MIXHOUSE_EVM_ENABLED": "true",
        "MIXHOUSE_KEYSTORE_PATH": str(path),
        "MIXHOUSE_KEYSTORE_PASSPHRASE_FILE": str(passphrase_file),
        "COLUMNS": "200",
    }
    withdrawal = "0x" + "cd" * 20

    def create() -> subprocess.CompletedProcess[str]:
        return _mixhouse(env, "mix", "create", "ETH", withdrawal)

    done = create()
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"deposit address: {HdKeyring(EVM_WORDS).deposit_address(0)}" in done.stdout
    wrong = tmp_path / "wrong"
    wrong.write_text("a wrong keystore passphrase\n", encoding="utf-8")
    env["MIXHOUSE_KEYSTORE_PASSPHRASE_FILE"] = str(wrong)
    refused = create()
    assert refused.returncode == 2
    assert "wrong keystore passphrase, or the keystore file was altered" in refused.stdout
    output = done.stdout + done.stderr + refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
    for secret in (PASSPHRASE, "a wrong keystore passphrase", " ".join(EVM_WORDS.split()[:4])):
        assert secret not in output
