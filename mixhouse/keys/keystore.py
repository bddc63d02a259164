"""The encrypted keystore: the software signer's BIP-39 mnemonics, encrypted at rest in one file.

Without an HSM the hot keys are derived in process from two BIP-39 mnemonics (Ethereum,
Bitcoin). The keystore keeps them out of the environment: they are stored in one JSON file,
encrypted under a key derived from the operator's passphrase, and decrypted once at start
(``MIXHOUSE_KEYSTORE_PATH`` and the passphrase from ``MIXHOUSE_KEYSTORE_PASSPHRASE_FILE`` or a
prompt; :func:`software_mnemonics`).

Cryptography (all from well-kept libraries, nothing hand-rolled):

* key derivation: Argon2id (RFC 9106) through argon2-cffi's ``hash_secret_raw``, a 16-byte
  random salt, a 32-byte key. The defaults are RFC 9106 section 4's *second* recommended option
  (t = 3 passes, m = 64 MiB, p = 4 lanes: about 0.14 s on one core of the test machine), the
  one it gives for machines that cannot spare the first option's 2 GiB. Stronger parameters can
  be chosen at creation (:class:`KdfParams`); weaker ones than :data:`MIN_KDF` are refused.
* encryption: ChaCha20-Poly1305 (RFC 8439) from ``cryptography``, a 12-byte random nonce,
  with the file's header (everything but the ciphertext, as canonical JSON) as associated
  data, so a changed parameter, salt, nonce or version fails the tag like a changed ciphertext.

File format, version 1 (JSON, UTF-8; binary fields base64)::

    {"format": "mixhouse-keystore", "version": 1,
     "kdf": {"name": "argon2id", "argon2_version": 19, "time_cost": 3, "memory_kib": 65536,
             "parallelism": 4, "salt": "..."},
     "cipher": {"name": "chacha20-poly1305", "nonce": "..."},
     "ciphertext": "..."}

The plaintext is ``{"evm_mnemonic": "...", "bitcoin_mnemonic": "..."}`` (JSON). The file is
written atomically (a temporary file in the same directory, fsynced, renamed over) with mode
0600, and never overwritten by :func:`create_keystore`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import getpass
import json
import os
import secrets
import sys
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argon2.exceptions import HashingError
from argon2.low_level import ARGON2_VERSION, Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from embit import bip39  # type: ignore[import-untyped]

from mixhouse.config import DEV_MNEMONIC, ENV_PREFIX, MIN_PRODUCTION_PASSPHRASE_CHARS, Settings
from mixhouse.errors import ConfigError

FORMAT = "mixhouse-keystore"
VERSION = 1
KDF_NAME = "argon2id"
CIPHER_NAME = "chacha20-poly1305"
SALT_BYTES = 16  # RFC 9106 section 4: a 128-bit salt
NONCE_BYTES = 12  # RFC 8439
KEY_BYTES = 32
# A file asking for more is refused before any work: the KDF runs before the tag is checked,
# so a planted file must not make the process allocate without bound.
MAX_KDF_MEMORY_KIB = 4 * 1024 * 1024  # 4 GiB
MAX_KDF_TIME_COST = 64
MAX_KDF_PARALLELISM = 64
MAX_FILE_BYTES = 1 << 16


class KeystoreError(ConfigError):
    """The keystore cannot be used: missing, unreadable, malformed, or an unknown version.
    Messages name the file, never a secret."""


class WrongPassphrase(KeystoreError):
    """The passphrase does not open the keystore, or the file was altered (the AEAD tag cannot
    tell the two apart)."""


class KeystoreExists(KeystoreError):
    """A keystore is already at the path: creating one would lose its keys."""


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost parameters (RFC 9106 section 3.1).

    Attributes:
        time_cost: passes over memory (``t``).
        memory_kib: memory in KiB (``m``; 65,536 = 64 MiB).
        parallelism: lanes (``p``).
    """

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 4

    def check(self, *, minimum: KdfParams | None = None) -> None:
        """Raise unless the parameters are within the bounds this module accepts.

        Args:
            minimum: also refuse a time or memory cost below this one's (creation uses
                :data:`MIN_KDF`; reading accepts what the file's authenticated header says).

        Raises:
            KeystoreError: a parameter out of range.
        """
        values = (self.time_cost, self.memory_kib, self.parallelism)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise KeystoreError("the keystore's KDF parameters are not integers")
        if not 1 <= self.parallelism <= MAX_KDF_PARALLELISM:
            raise KeystoreError(f"argon2id parallelism must be in [1, {MAX_KDF_PARALLELISM}]")
        if not 1 <= self.time_cost <= MAX_KDF_TIME_COST:
            raise KeystoreError(f"argon2id time cost must be in [1, {MAX_KDF_TIME_COST}]")
        # Argon2 needs at least 8 KiB per lane (RFC 9106 section 3.1).
        if not 8 * self.parallelism <= self.memory_kib <= MAX_KDF_MEMORY_KIB:
            raise KeystoreError(f"argon2id memory must be in [8 x parallelism, {MAX_KDF_MEMORY_KIB}] KiB")
        if minimum is not None and (self.time_cost < minimum.time_cost or self.memory_kib < minimum.memory_kib):
            raise KeystoreError(
                f"argon2id parameters weaker than RFC 9106's second recommended option "
                f"(t={minimum.time_cost}, m={minimum.memory_kib} KiB) are refused"
            )


# RFC 9106 section 4, second recommended option: the defaults and the floor for new keystores.
RFC9106_SECOND = KdfParams(time_cost=3, memory_kib=64 * 1024, parallelism=4)
MIN_KDF = RFC9106_SECOND


@dataclass(frozen=True)
class Mnemonics:
    """The software signer's BIP-39 phrases (``repr`` shows neither).

    Attributes:
        evm: the Ethereum seed phrase (BIP-44 keys, :class:`mixhouse.keys.hd.HdKeyring`).
        bitcoin: the Bitcoin seed phrase (BIP-84 keys, :class:`mixhouse.keys.bip84.Bip84Keyring`).
    """

    evm: str = field(repr=False)
    bitcoin: str = field(repr=False)

    def check(self) -> None:
        """Raise unless both phrases are valid BIP-39 (English wordlist, checksum).

        Raises:
            KeystoreError: naming the phrase (``evm`` or ``bitcoin``), never its words.
        """
        for name, words in (("evm", self.evm), ("bitcoin", self.bitcoin)):
            if not bip39.mnemonic_is_valid(_words(words)):
                raise KeystoreError(f"the {name} mnemonic is not a valid BIP-39 phrase (words or checksum)")


def fresh_mnemonic(words: int = 24) -> str:
    """A new BIP-39 phrase of ``words`` words (12, 15, 18, 21 or 24) from :mod:`secrets`
    entropy (32 bits of entropy per 3 words), encoded by embit's ``bip39``.

    Raises:
        ValueError: another word count.
    """
    if words not in (12, 15, 18, 21, 24):
        raise ValueError("a BIP-39 phrase has 12, 15, 18, 21 or 24 words")
    return str(bip39.mnemonic_from_bytes(secrets.token_bytes(words * 4 // 3)))


def _words(mnemonic: str) -> str:
    return " ".join(unicodedata.normalize("NFKD", mnemonic).split())


def _passphrase_bytes(passphrase: str) -> bytes:
    # NFC: the same passphrase typed on two keyboards (composed or decomposed accents) opens
    # the same file.
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise KeystoreError(f"the keystore's {what} is not a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeystoreError(f"the keystore's {what} is not valid base64") from None


def _associated_data(header: dict[str, Any]) -> bytes:
    """The header (the file without its ciphertext) as canonical JSON: sorted keys, no spaces."""
    return json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _derive_key(passphrase: str, salt: bytes, params: KdfParams) -> bytes:
    try:
        return bytes(
            hash_secret_raw(
                _passphrase_bytes(passphrase),
                salt,
                time_cost=params.time_cost,
                memory_cost=params.memory_kib,
                parallelism=params.parallelism,
                hash_len=KEY_BYTES,
                type=Type.ID,
                version=ARGON2_VERSION,
            )
        )
    except HashingError as exc:  # e.g. the memory could not be allocated
        raise KeystoreError(f"argon2id failed: {exc}") from None


def encrypt_mnemonics(mnemonics: Mnemonics, passphrase: str, *, kdf: KdfParams = RFC9106_SECOND) -> dict[str, Any]:
    """The keystore document (a JSON-ready dict, format version 1) holding ``mnemonics``.

    Args:
        passphrase: the operator's passphrase (non-empty; any Unicode, NFC-normalised).
        kdf: Argon2id costs, at least :data:`MIN_KDF`.

    Raises:
        KeystoreError: an empty passphrase, weak or out-of-range KDF parameters, or a phrase
            that is not valid BIP-39.
    """
    if not passphrase:
        raise KeystoreError("the keystore passphrase is empty")
    kdf.check(minimum=MIN_KDF)
    mnemonics.check()
    salt, nonce = secrets.token_bytes(SALT_BYTES), secrets.token_bytes(NONCE_BYTES)
    header: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "kdf": {
            "name": KDF_NAME,
            "argon2_version": ARGON2_VERSION,
            "time_cost": kdf.time_cost,
            "memory_kib": kdf.memory_kib,
            "parallelism": kdf.parallelism,
            "salt": _b64(salt),
        },
        "cipher": {"name": CIPHER_NAME, "nonce": _b64(nonce)},
    }
    plaintext = json.dumps({"evm_mnemonic": _words(mnemonics.evm), "bitcoin_mnemonic": _words(mnemonics.bitcoin)})
    key = _derive_key(passphrase, salt, kdf)
    ciphertext = ChaCha20Poly1305(key).encrypt(nonce, plaintext.encode("utf-8"), _associated_data(header))
    return {**header, "ciphertext": _b64(ciphertext)}


def _header_of(document: object) -> tuple[dict[str, Any], KdfParams, bytes, bytes, bytes]:
    """``(header, kdf params, salt, nonce, ciphertext)`` of a parsed keystore document.

    Raises:
        KeystoreError: not a keystore, another version, or a malformed field.
    """
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise KeystoreError("the file is not a Mixhouse keystore")
    if document.get("version") != VERSION:
        raise KeystoreError(
            f"keystore version {document.get('version')!r} is not supported (this build reads {VERSION})"
        )
    kdf, cipher = document.get("kdf"), document.get("cipher")
    if not isinstance(kdf, dict) or kdf.get("name") != KDF_NAME or kdf.get("argon2_version") != ARGON2_VERSION:
        raise KeystoreError(f"the keystore's KDF is not {KDF_NAME} version {ARGON2_VERSION}")
    if not isinstance(cipher, dict) or cipher.get("name") != CIPHER_NAME:
        raise KeystoreError(f"the keystore's cipher is not {CIPHER_NAME}")
    params = KdfParams(kdf.get("time_cost"), kdf.get("memory_kib"), kdf.get("parallelism"))  # type: ignore[arg-type]
    params.check()
    salt, nonce = _unb64(kdf.get("salt"), "salt"), _unb64(cipher.get("nonce"), "nonce")
    if len(salt) < SALT_BYTES or len(nonce) != NONCE_BYTES:
        raise KeystoreError("the keystore's salt or nonce has the wrong length")
    header = {name: value for name, value in document.items() if name != "ciphertext"}
    return header, params, salt, nonce, _unb64(document.get("ciphertext"), "ciphertext")


def decrypt_mnemonics(document: object, passphrase: str) -> Mnemonics:
    """The mnemonics in a keystore document (the parsed JSON of a keystore file).

    Raises:
        WrongPassphrase: the passphrase is wrong or any byte of the document was changed.
        KeystoreError: the document is not a keystore of a supported version or is malformed.
    """
    header, params, salt, nonce, ciphertext = _header_of(document)
    key = _derive_key(passphrase, salt, params)
    try:
        plaintext = ChaCha20Poly1305(key).decrypt(nonce, ciphertext, _associated_data(header))
    except InvalidTag:
        raise WrongPassphrase("wrong keystore passphrase, or the keystore file was altered") from None
    try:
        body = json.loads(plaintext.decode("utf-8"))
        mnemonics = Mnemonics(evm=str(body["evm_mnemonic"]), bitcoin=str(body["bitcoin_mnemonic"]))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        # Authentic (the tag verified) yet unreadable: written by something else than this module.
        raise KeystoreError("the keystore decrypts to an unexpected content") from None
    return mnemonics


def write_atomically(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` with mode 0600: a temporary file in the same directory,
    fsynced, then renamed over ``path`` (POSIX ``rename`` is atomic), then the directory fsynced.

    Args:
        overwrite: replace an existing file; ``False`` refuses (checked with a hard link, so two
            processes creating at once cannot both succeed).

    Raises:
        KeystoreExists: ``path`` exists and not ``overwrite``.
        KeystoreError: the file cannot be written (the message names the path).
    """
    directory = path.parent if str(path.parent) else Path()
    temporary = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            temporary.replace(path)
        else:
            try:
                # link() fails if the name exists: no check-then-rename race.
                os.link(temporary, path)
            except FileExistsError:
                raise KeystoreExists(f"{path} exists: refusing to overwrite a keystore") from None
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise KeystoreError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def create_keystore(path: Path, mnemonics: Mnemonics, passphrase: str, *, kdf: KdfParams = RFC9106_SECOND) -> None:
    """Encrypt ``mnemonics`` under ``passphrase`` into a new keystore file at ``path`` (0600).

    Raises:
        KeystoreExists: a file is at ``path`` already.
        KeystoreError: as :func:`encrypt_mnemonics`, or the file cannot be written.
    """
    document = encrypt_mnemonics(mnemonics, passphrase, kdf=kdf)
    write_atomically(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"), overwrite=False)


def read_document(path: Path) -> object:
    """The parsed JSON of the keystore file at ``path``.

    Raises:
        KeystoreError: missing, unreadable, too large (over 64 KiB) or not JSON.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise KeystoreError(f"cannot read keystore {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise KeystoreError(f"{path} is too large to be a keystore")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise KeystoreError(f"{path} is not a keystore (not JSON)") from None


def open_keystore(path: Path, passphrase: str) -> Mnemonics:
    """The mnemonics of the keystore file at ``path``.

    Raises:
        WrongPassphrase: wrong passphrase or altered file.
        KeystoreError: missing, unreadable, malformed or of an unknown version.
    """
    return decrypt_mnemonics(read_document(path), passphrase)


def change_passphrase(path: Path, old: str, new: str, *, kdf: KdfParams = RFC9106_SECOND) -> None:
    """Re-encrypt the keystore at ``path`` under ``new`` (fresh salt and nonce), atomically.

    Raises:
        WrongPassphrase: ``old`` does not open it.
        KeystoreError: as :func:`open_keystore` and :func:`encrypt_mnemonics`.
    """
    mnemonics = open_keystore(path, old)
    document = encrypt_mnemonics(mnemonics, new, kdf=kdf)
    write_atomically(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"), overwrite=True)


def check_passphrase_strength(passphrase: str, settings: Settings) -> None:
    """Refuse, in production, a keystore passphrase shorter than
    :data:`MIN_PRODUCTION_PASSPHRASE_CHARS` characters.

    Raises:
        ConfigError: too short (the message gives the minimum, never the passphrase).
    """
    if settings.environment == "production" and len(passphrase) < MIN_PRODUCTION_PASSPHRASE_CHARS:
        raise ConfigError(
            "the keystore passphrase is too short for production: "
            f"at least {MIN_PRODUCTION_PASSPHRASE_CHARS} characters"
        )


def passphrase_from(settings: Settings, *, prompt: Callable[[str], str] | None = None) -> str:
    """The keystore passphrase: ``settings.keystore_passphrase`` (best given as
    ``MIXHOUSE_KEYSTORE_PASSPHRASE_FILE``), else typed at a prompt when standard input is a
    terminal.

    Args:
        prompt: asks for a line without echo (default :func:`getpass.getpass` if stdin is a TTY).

    Raises:
        ConfigError: no passphrase setting and no terminal to ask on, or (production) a
            passphrase shorter than :data:`MIN_PRODUCTION_PASSPHRASE_CHARS`.
    """
    secret = settings.keystore_passphrase
    if secret is not None:
        passphrase = secret.get_secret_value()
    else:
        if prompt is None and sys.stdin is not None and sys.stdin.isatty():
            prompt = getpass.getpass
        if prompt is None:
            raise ConfigError(
                f"{ENV_PREFIX}KEYSTORE_PATH is set: give the passphrase as {ENV_PREFIX}KEYSTORE_PASSPHRASE_FILE "
                "or run on a terminal to type it"
            )
        passphrase = prompt(f"Passphrase of keystore {settings.keystore_path}: ")
    check_passphrase_strength(passphrase, settings)
    return passphrase


def software_mnemonics(settings: Settings, *, prompt: Callable[[str], str] | None = None) -> Mnemonics:
    """The mnemonics the software signer derives its keys from: those of the keystore at
    ``settings.keystore_path`` (unlocked by :func:`passphrase_from`) when it is set, else the
    ``evm_mnemonic`` / ``bitcoin_mnemonic`` settings.

    In production a keystore holding the public development mnemonic is refused (the settings
    refuse it in the environment already).

    Raises:
        WrongPassphrase: the passphrase does not open the keystore.
        KeystoreError: the keystore is missing, unreadable or malformed.
        ConfigError: as :func:`passphrase_from`; a development mnemonic in a production keystore.
    """
    if settings.keystore_path is None:
        return Mnemonics(
            evm=settings.evm_mnemonic.get_secret_value(), bitcoin=settings.bitcoin_mnemonic.get_secret_value()
        )
    mnemonics = open_keystore(settings.keystore_path, passphrase_from(settings, prompt=prompt))
    if settings.environment == "production" and DEV_MNEMONIC in (_words(mnemonics.evm), _words(mnemonics.bitcoin)):
        raise ConfigError("the keystore holds the public development mnemonic: refused in production")
    return mnemonics
