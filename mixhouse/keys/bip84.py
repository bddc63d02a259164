"""BIP-84 (native segwit, P2WPKH) Bitcoin keys from a BIP-39 mnemonic.

Layout (BIP-84 on top of BIP-32/BIP-44; coin type from SLIP-44):

* account: ``m/84'/{coin}'/0'`` with ``coin`` = 0 on mainnet and 1 on every test network
  (testnet, signet, regtest);
* key ``(change, index)``: ``m/84'/{coin}'/0'/{change}/{index}``, ``change`` 0 for the
  external (receive) chain and 1 for the internal (change) chain;
* address: P2WPKH, ``bech32(hrp, 0, HASH160(compressed pubkey))`` (BIP-141, BIP-173).

The BIP-39 seed (PBKDF2-HMAC-SHA512, 2048 rounds) and the account key are computed once per
:class:`Bip84Keyring`; each chain key and each leaf key is then derived once and cached.
All BIP-32 / BIP-39 arithmetic is embit's (``embit.bip39``, ``embit.bip32``).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from embit import bech32, bip32, bip39, hashes  # type: ignore[import-untyped]
from embit.descriptor.checksum import add_checksum  # type: ignore[import-untyped]

from mixhouse.chains.bitcoin.networks import Network, embit_network, get_network
from mixhouse.errors import ConfigError

HARDENED = 2**31
MAX_SOFT_INDEX = 2**31 - 1
BIP84_PURPOSE = 84
ACCOUNT = 0


def _check_change(change: int) -> None:
    if isinstance(change, bool) or change not in (0, 1):
        raise ValueError(f"change must be 0 (receive) or 1 (change), got {change!r}")


def _check_index(index: int) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_SOFT_INDEX:
        raise ValueError(f"index must be an int in [0, {MAX_SOFT_INDEX}], got {index!r}")


def key_path(network: str, change: int, index: int) -> str:
    """The BIP-32 path of key ``(change, index)`` of account 0 on ``network``, e.g.
    ``"m/84'/1'/0'/0/7"``: the key reference a signer knows it by.

    Raises:
        ValueError: ``change`` not 0 or 1, or ``index`` outside ``[0, 2**31)``.
        ConfigError: unknown network.
    """
    _check_change(change)
    _check_index(index)
    return f"m/{BIP84_PURPOSE}'/{get_network(network).bip84_coin_type}'/{ACCOUNT}'/{change}/{index}"


def p2wpkh_address(public_key: bytes, network: str) -> str:
    """The P2WPKH address ``bech32(hrp, 0, HASH160(public_key))`` (BIP-141, BIP-173) of a
    33-byte compressed public key on ``network``.

    Raises:
        ValueError: ``public_key`` is not 33 bytes.
        ConfigError: unknown network.
    """
    if len(public_key) != 33:
        raise ValueError("a P2WPKH key is a 33-byte compressed public key")
    return str(bech32.encode(get_network(network).bech32_hrp, 0, hashes.hash160(public_key)))


class Bip84Keyring:
    """P2WPKH keys of BIP-84 account 0 derived from one BIP-39 mnemonic.

    Args:
        mnemonic: a BIP-39 phrase from the English wordlist (12 to 24 words); extra
            whitespace is ignored.
        network: a network name of :mod:`mixhouse.chains.bitcoin.networks` (``"mainnet"``,
            ``"testnet"``, ``"signet"``, ``"regtest"``, ...); it picks the coin type, the
            address prefix and the extended-key version bytes.
        passphrase: the optional BIP-39 passphrase ("25th word"), NFKD-normalised as BIP-39
            requires; ``""`` if none.

    Raises:
        ConfigError: the mnemonic is not a valid BIP-39 phrase (unknown word, wrong length or
            bad checksum; the message never repeats the words), or the network is unknown.

    ``repr`` never shows the mnemonic, the seed or a key.
    """

    __slots__ = ("_account", "_chains", "_fingerprint", "_leaves", "_net", "_network", "_version")

    def __init__(self, mnemonic: str, network: str, passphrase: str = "") -> None:
        self._network: Network = get_network(network)
        self._net: dict[str, Any] = embit_network(network)
        words = " ".join(unicodedata.normalize("NFKD", mnemonic).split())
        if not words:
            raise ConfigError("the Bitcoin mnemonic is empty")
        try:
            bip39.mnemonic_to_bytes(words)
        except ValueError:
            # embit's message names the unknown word: keep the secret out of logs.
            raise ConfigError("the Bitcoin mnemonic is not a valid BIP-39 phrase") from None
        # The slow step (PBKDF2, 2048 rounds): done once here, never per key.
        seed = bip39.mnemonic_to_seed(words, unicodedata.normalize("NFKD", passphrase))
        root = bip32.HDKey.from_seed(seed, version=self._net["xprv"])
        self._fingerprint: bytes = bytes(root.my_fingerprint)
        coin = self._network.bip84_coin_type
        self._account: Any = root.derive([BIP84_PURPOSE + HARDENED, coin + HARDENED, ACCOUNT + HARDENED])
        self._chains: dict[int, Any] = {}
        # (change, index) -> (private key, compressed public key, address)
        self._leaves: dict[tuple[int, int], tuple[bytes, bytes, str]] = {}

    def __repr__(self) -> str:
        return f"<Bip84Keyring {self._network.name} with {len(self._leaves)} derived keys>"

    @property
    def network(self) -> Network:
        """The network the keys and addresses are for."""
        return self._network

    @property
    def fingerprint(self) -> bytes:
        """The 4-byte BIP-32 fingerprint of the master key (HASH160 of its pubkey, first 4 bytes)."""
        return self._fingerprint

    def account_path(self) -> str:
        """The BIP-32 path of the account, e.g. ``"m/84'/1'/0'"``."""
        return f"m/{BIP84_PURPOSE}'/{self._network.bip84_coin_type}'/{ACCOUNT}'"

    def path(self, change: int, index: int) -> str:
        """The BIP-32 path of key ``(change, index)``, e.g. ``"m/84'/1'/0'/0/7"``.

        Raises:
            ValueError: ``change`` not 0 or 1, or ``index`` outside ``[0, 2**31)``.
        """
        _check_change(change)
        _check_index(index)
        return f"{self.account_path()}/{change}/{index}"

    def split_path(self, path: str) -> tuple[int, int]:
        """``(change, index)`` of a path :meth:`path` gives, e.g. ``"m/84'/1'/0'/1/3"`` -> ``(1, 3)``.

        Raises:
            ValueError: not a path of a key of this account.
        """
        prefix = self.account_path() + "/"
        parts = path[len(prefix) :].split("/") if path.startswith(prefix) else []
        if len(parts) != 2 or not all(part.isdigit() for part in parts):
            raise ValueError(f"{path!r} is not a key path of account {self.account_path()}")
        change, index = int(parts[0]), int(parts[1])
        _check_change(change)
        _check_index(index)
        return change, index

    def _leaf(self, change: int, index: int) -> tuple[bytes, bytes, str]:
        # Checked before the cache: True == 1 would otherwise find key (1, index).
        _check_change(change)
        _check_index(index)
        leaf = self._leaves.get((change, index))
        if leaf is None:
            chain = self._chains.get(change)
            if chain is None:
                chain = self._account.child(change)
                self._chains[change] = chain
            key = chain.child(index)
            private = bytes(key.key.serialize())
            public = bytes(key.sec())
            address = bech32.encode(self._network.bech32_hrp, 0, hashes.hash160(public))
            leaf = (private, public, str(address))
            self._leaves[(change, index)] = leaf
        return leaf

    def private_key(self, change: int, index: int) -> bytes:
        """The 32-byte secp256k1 private key of ``m/84'/coin'/0'/{change}/{index}``.

        Raises:
            ValueError: ``change`` not 0 or 1, or ``index`` outside ``[0, 2**31)``.
        """
        return self._leaf(change, index)[0]

    def public_key(self, change: int, index: int) -> bytes:
        """The 33-byte compressed (SEC) public key of key ``(change, index)``.

        Raises:
            ValueError: as :meth:`private_key`.
        """
        return self._leaf(change, index)[1]

    def address(self, change: int, index: int) -> str:
        """The P2WPKH address (lower-case bech32, ``bc1q``/``tb1q``/``bcrt1q``) of key
        ``(change, index)``.

        Raises:
            ValueError: as :meth:`private_key`.
        """
        return self._leaf(change, index)[2]

    def account_xpub(self, *, slip132: bool = True) -> str:
        """The extended public key of the account ``m/84'/coin'/0'``.

        Args:
            slip132: ``True`` (default) for the SLIP-132 version bytes that BIP-84 itself
                uses - ``zpub`` on mainnet, ``vpub`` on the test networks - which tell a
                wallet to derive P2WPKH addresses; ``False`` for the plain BIP-32 ``xpub`` /
                ``tpub`` that output descriptors and Bitcoin Core expect.
        """
        version = self._net["zpub"] if slip132 else self._net["xpub"]
        return str(self._account.to_public().to_base58(version=version))

    def descriptor(self, change: int = 0) -> str:
        """The output descriptor (BIP-380/381/382) of one chain of the account, with its checksum.

        ``wpkh([<fingerprint>/84h/<coin>h/0h]<xpub or tpub>/<change>/*)#<checksum>``; the key is
        the plain ``xpub``/``tpub`` (descriptors do not take SLIP-132 versions) and the
        8-character checksum is computed by ``embit.descriptor.checksum.add_checksum``. Give it
        to Bitcoin Core's ``importdescriptors`` or ``deriveaddresses`` to watch the chain.

        Raises:
            ValueError: ``change`` not 0 or 1.
        """
        _check_change(change)
        origin = f"{self._fingerprint.hex()}/{BIP84_PURPOSE}h/{self._network.bip84_coin_type}h/{ACCOUNT}h"
        body = f"wpkh([{origin}]{self.account_xpub(slip132=False)}/{change}/*)"
        return str(add_checksum(body))
