"""``mixhouse keys``: create, check and read the encrypted keystore (:mod:`mixhouse.keys.keystore`).

* ``init`` writes a new keystore with fresh BIP-39 mnemonics (24 words from :mod:`secrets`) or
  imported ones (read from files, never from the command line, where ``ps`` and the shell
  history would show them), and prints only the public side (fingerprints, xpubs, the EVM pool
  address); the words are printed only with ``--show-mnemonic``, for the paper backup;
* ``unlock`` checks a passphrase against the keystore and prints the seeds' fingerprints;
* ``export-xpub`` prints the account xpubs (BIP-84 ``zpub``/``vpub`` and ``xpub``/``tpub``,
  descriptors) and the EVM pool address;
* ``passphrase`` re-encrypts the keystore under a new passphrase;
* ``rotate ASSET`` (a new pool key generation) is added to this group by the shell
  (:mod:`mixhouse.app.key_rotation_cli`): it opens the database and runs the mixer's
  :mod:`mixhouse.mixer.pool_rotation`, which this shared layer must not import.

The keystore is ``--keystore`` or ``MIXHOUSE_KEYSTORE_PATH``; the passphrase comes from
``--passphrase-file``, ``MIXHOUSE_KEYSTORE_PASSPHRASE_FILE``, or a prompt without echo. Only
``rotate`` touches the database. Errors exit with code 2 and a message that names no secret.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from mixhouse.config import Settings
from mixhouse.errors import ConfigError, MixhouseError
from mixhouse.keys.keystore import (
    RFC9106_SECOND,
    KdfParams,
    Mnemonics,
    change_passphrase,
    check_passphrase_strength,
    create_keystore,
    fresh_mnemonic,
    open_keystore,
    software_mnemonics,
)

keys_app = typer.Typer(help="The encrypted keystore of the software signer's seeds.", no_args_is_help=True)

KeystoreOption = Annotated[
    Path | None, typer.Option("--keystore", help="The keystore file (default: MIXHOUSE_KEYSTORE_PATH).")
]
PassphraseFileOption = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help="Read the passphrase from this file (default: MIXHOUSE_KEYSTORE_PASSPHRASE_FILE, else a prompt).",
    ),
]


def _fail(exc: MixhouseError | ValueError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=2)


def _settings() -> Settings:
    try:
        return Settings()
    except ConfigError as exc:
        raise _fail(exc) from None


def _keystore_path(settings: Settings, given: Path | None) -> Path:
    path = given or settings.keystore_path
    if path is None:
        raise _fail(ConfigError("give --keystore PATH or set MIXHOUSE_KEYSTORE_PATH"))
    return path


def _read_secret_file(path: Path, what: str) -> str:
    """The text of a secret file, one trailing newline stripped (as ``MIXHOUSE_<NAME>_FILE``)."""
    try:
        return path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    except (OSError, UnicodeDecodeError):
        raise _fail(ConfigError(f"cannot read the {what} file {path}")) from None


def _passphrase(settings: Settings, given: Path | None, *, confirm: bool = False, label: str = "Passphrase") -> str:
    if given is not None:
        return _read_secret_file(given, "passphrase")
    if settings.keystore_passphrase is not None:
        return settings.keystore_passphrase.get_secret_value()
    return str(typer.prompt(label, hide_input=True, confirmation_prompt=confirm, err=True))


def _print_public(mnemonics: Mnemonics, settings: Settings, *, as_json: bool) -> None:
    from mixhouse.keys.xpubs import public_keys  # noqa: PLC0415 - eth_account: slow to import

    public = public_keys(mnemonics, settings.bitcoin_network)
    if as_json:
        typer.echo(json.dumps(asdict(public), indent=2))
        return
    typer.echo(f"EVM seed fingerprint:      {public.evm_fingerprint}")
    typer.echo(f"EVM pool address:          {public.evm_pool_address}")
    typer.echo(f"EVM deposit account xpub:  {public.evm_deposit_xpub}  (m/44'/60'/0')")
    typer.echo(f"Bitcoin seed fingerprint:  {public.bitcoin_fingerprint}")
    typer.echo(f"Bitcoin account ({public.bitcoin_network}): {public.bitcoin_account_path}")
    typer.echo(f"  BIP-84 (SLIP-132):       {public.bitcoin_zpub}")
    typer.echo(f"  BIP-32:                  {public.bitcoin_xpub}")
    typer.echo(f"  receive descriptor:      {public.bitcoin_receive_descriptor}")
    typer.echo(f"  change descriptor:       {public.bitcoin_change_descriptor}")


@keys_app.command("init")
def keys_init(
    *,
    keystore: KeystoreOption = None,
    passphrase_file: PassphraseFileOption = None,
    evm_mnemonic_file: Annotated[
        Path | None, typer.Option(help="Import the EVM seed phrase from this file instead of making a new one.")
    ] = None,
    bitcoin_mnemonic_file: Annotated[
        Path | None, typer.Option(help="Import the Bitcoin seed phrase from this file instead of making a new one.")
    ] = None,
    words: Annotated[int, typer.Option(help="Words of each new phrase (12, 15, 18, 21 or 24).")] = 24,
    show_mnemonic: Annotated[
        bool, typer.Option("--show-mnemonic", help="Print the phrases once, to write them down for the backup.")
    ] = False,
    kdf_time_cost: Annotated[int, typer.Option(help="Argon2id passes (at least 3).")] = RFC9106_SECOND.time_cost,
    kdf_memory_kib: Annotated[
        int, typer.Option(help="Argon2id memory in KiB (at least 65536).")
    ] = RFC9106_SECOND.memory_kib,
    kdf_parallelism: Annotated[int, typer.Option(help="Argon2id lanes.")] = RFC9106_SECOND.parallelism,
) -> None:
    """Create a keystore holding an EVM and a Bitcoin seed phrase, encrypted under a passphrase."""
    settings = _settings()
    path = _keystore_path(settings, keystore)
    try:
        if words not in (12, 15, 18, 21, 24):
            raise ConfigError("--words must be 12, 15, 18, 21 or 24")
        evm = _read_secret_file(evm_mnemonic_file, "EVM mnemonic") if evm_mnemonic_file else fresh_mnemonic(words)
        bitcoin = (
            _read_secret_file(bitcoin_mnemonic_file, "Bitcoin mnemonic")
            if bitcoin_mnemonic_file
            else fresh_mnemonic(words)
        )
        mnemonics = Mnemonics(evm=" ".join(evm.split()), bitcoin=" ".join(bitcoin.split()))
        # Checked before the passphrase is asked for: a typo in an imported phrase fails fast.
        mnemonics.check()
        if path.exists():
            raise ConfigError(f"{path} exists: refusing to overwrite a keystore")
        passphrase = _passphrase(settings, passphrase_file, confirm=True, label="New keystore passphrase")
        check_passphrase_strength(passphrase, settings)
        kdf = KdfParams(time_cost=kdf_time_cost, memory_kib=kdf_memory_kib, parallelism=kdf_parallelism)
        create_keystore(path, mnemonics, passphrase, kdf=kdf)
    except MixhouseError as exc:
        raise _fail(exc) from None
    typer.echo(
        f"keystore written to {path} (argon2id t={kdf.time_cost} m={kdf.memory_kib} KiB p={kdf.parallelism}, "
        "chacha20-poly1305, mode 0600)"
    )
    _print_public(mnemonics, settings, as_json=False)
    if show_mnemonic:
        # The one place a phrase is printed, on purpose: the operator asked for the backup.
        typer.echo("\nWrite these down and keep them offline; anyone with them holds the keys.", err=True)
        typer.echo(f"EVM mnemonic:     {mnemonics.evm}")
        typer.echo(f"Bitcoin mnemonic: {mnemonics.bitcoin}")
    else:
        typer.echo("The phrases are not shown: run `mixhouse keys init --show-mnemonic` to write down a paper backup.")


def _open(settings: Settings, keystore: Path | None, passphrase_file: Path | None) -> Mnemonics:
    path = _keystore_path(settings, keystore)
    try:
        return open_keystore(path, _passphrase(settings, passphrase_file, label=f"Passphrase of keystore {path}"))
    except MixhouseError as exc:
        raise _fail(exc) from None


@keys_app.command("unlock")
def keys_unlock(keystore: KeystoreOption = None, passphrase_file: PassphraseFileOption = None) -> None:
    """Check a passphrase against the keystore and print the seeds' BIP-32 fingerprints."""
    from mixhouse.keys.xpubs import fingerprint  # noqa: PLC0415

    settings = _settings()
    mnemonics = _open(settings, keystore, passphrase_file)
    typer.echo("keystore unlocked")
    typer.echo(f"EVM seed fingerprint:     {fingerprint(mnemonics.evm)}")
    typer.echo(f"Bitcoin seed fingerprint: {fingerprint(mnemonics.bitcoin)}")


@keys_app.command("export-xpub")
def keys_export_xpub(
    keystore: KeystoreOption = None,
    passphrase_file: PassphraseFileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the account xpubs (BIP-84 for Bitcoin, on MIXHOUSE_BITCOIN_NETWORK) and the EVM pool
    address, of the keystore (or, with no keystore set, of MIXHOUSE_EVM/BITCOIN_MNEMONIC)."""
    settings = _settings()
    if keystore is None and settings.keystore_path is None:
        try:
            mnemonics = software_mnemonics(settings)
        except MixhouseError as exc:
            raise _fail(exc) from None
    else:
        mnemonics = _open(settings, keystore, passphrase_file)
    try:
        _print_public(mnemonics, settings, as_json=as_json)
    except (MixhouseError, ValueError) as exc:
        raise _fail(exc) from None


@keys_app.command("passphrase")
def keys_passphrase(
    keystore: KeystoreOption = None,
    passphrase_file: PassphraseFileOption = None,
    new_passphrase_file: Annotated[
        Path | None, typer.Option(help="Read the new passphrase from this file (default: a prompt).")
    ] = None,
) -> None:
    """Re-encrypt the keystore under a new passphrase (fresh salt and nonce, same seeds)."""
    settings = _settings()
    path = _keystore_path(settings, keystore)
    old = _passphrase(settings, passphrase_file, label=f"Current passphrase of {path}")
    if new_passphrase_file is not None:
        new = _read_secret_file(new_passphrase_file, "new passphrase")
    else:
        new = str(typer.prompt("New passphrase", hide_input=True, confirmation_prompt=True, err=True))
    try:
        check_passphrase_strength(new, settings)
        change_passphrase(path, old, new)
    except MixhouseError as exc:
        raise _fail(exc) from None
    typer.echo(f"keystore {path} re-encrypted under the new passphrase")
