"""BIP-32 / BIP-44 key derivation for Ethereum from a BIP-39 mnemonic.

Paths (BIP-44, coin type 60 = Ethereum, see SLIP-44):

* deposit key ``i``: ``m/44'/60'/0'/0/{i}`` (account 0, external chain), :func:`deposit_path`;
* the pool key: ``m/44'/60'/1'/0/0`` (account 1), :data:`POOL_PATH`. A separate hardened
  account keeps the pool out of the deposit index range, whatever index a mix reaches.

The BIP-39 seed (PBKDF2-HMAC-SHA512, 2048 rounds) is computed once per :class:`HdKeyring`;
each path is then derived from the seed with ``eth_account.hdaccount.key_from_seed`` and
cached, so the mixer can ask for the same key on every scan and send without paying again.
"""

from __future__ import annotations

from eth_account import Account
from eth_account.hdaccount import key_from_seed, seed_from_mnemonic
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from eth_utils.exceptions import ValidationError

from mixhouse.errors import ConfigError
from mixhouse.keys.signer import uncompressed_public_key

# Indexes at or above 2**31 are hardened in BIP-32; a deposit index is a plain (soft) index.
MAX_SOFT_INDEX = 2**31 - 1

POOL_PATH = "m/44'/60'/1'/0/0"


def deposit_path(index: int) -> str:
    """The BIP-44 path of deposit key ``index``: ``m/44'/60'/0'/0/{index}``.

    Raises:
        ValueError: ``index`` is negative or not below ``2**31`` (BIP-32 soft index range).
    """
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_SOFT_INDEX:
        raise ValueError(f"deposit index must be an int in [0, {MAX_SOFT_INDEX}], got {index!r}")
    return f"m/44'/60'/0'/0/{index}"


def evm_address(public_key: bytes) -> str:
    """The EIP-55 checksummed address of a 33-byte compressed secp256k1 public key: the last
    20 bytes of ``keccak256(x || y)`` (Yellow Paper, appendix F).

    Raises:
        ValueError: ``public_key`` is not a compressed point of secp256k1.
    """
    if len(public_key) != 33:
        raise ValueError("an EVM key is given as a 33-byte compressed public key")
    return str(to_checksum_address(keccak(uncompressed_public_key(public_key)[1:])[-20:]))


class HdKeyring:
    """Ethereum keys derived from one BIP-39 mnemonic (BIP-32 paths, BIP-44 layout).

    Args:
        mnemonic: a BIP-39 phrase (12 to 24 words, any language eth_account knows); extra
            whitespace is ignored.
        passphrase: the optional BIP-39 passphrase ("25th word"); ``""`` if none.

    Raises:
        ConfigError: the mnemonic is not a valid BIP-39 phrase (unknown word or bad checksum).

    The mnemonic and the seed are never shown by ``repr``. Derived keys are cached per path
    for the life of the object.
    """

    __slots__ = ("_addresses", "_keys", "_seed")

    def __init__(self, mnemonic: str, passphrase: str = "") -> None:
        words = " ".join(mnemonic.split())
        if not words:
            raise ConfigError("the EVM mnemonic is empty")
        try:
            # The slow step (PBKDF2 with 2048 rounds): done once here, never per path.
            self._seed: bytes = seed_from_mnemonic(words, passphrase)
        except ValidationError:
            # The message of eth_account repeats the words: keep the secret out of logs.
            raise ConfigError("the EVM mnemonic is not a valid BIP-39 phrase") from None
        self._keys: dict[str, bytes] = {}
        self._addresses: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<HdKeyring with {len(self._keys)} derived keys>"

    def private_key(self, path: str) -> bytes:
        """The 32-byte secp256k1 private key at BIP-32 ``path`` (e.g. ``"m/44'/60'/0'/0/7"``).

        Raises:
            ValueError: ``path`` is not a valid BIP-32 path.
        """
        key = self._keys.get(path)
        if key is None:
            try:
                key = bytes(key_from_seed(self._seed, path))
            except ValidationError as exc:
                raise ValueError(f"invalid BIP-32 path {path!r}: {exc}") from None
            self._keys[path] = key
        return key

    def address(self, path: str) -> str:
        """The EIP-55 checksummed Ethereum address of the key at ``path`` (``0x`` + 40 hex).

        Raises:
            ValueError: ``path`` is not a valid BIP-32 path.
        """
        address = self._addresses.get(path)
        if address is None:
            address = str(Account.from_key(self.private_key(path)).address)
            self._addresses[path] = address
        return address

    def deposit_address(self, index: int) -> str:
        """The checksummed address of deposit key ``index`` (path :func:`deposit_path`)."""
        return self.address(deposit_path(index))

    def pool_address(self) -> str:
        """The checksummed address of the pool key (path :data:`POOL_PATH`)."""
        return self.address(POOL_PATH)
