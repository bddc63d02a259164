"""BIP-84 (native segwit, P2WPKH) Bitcoin keys from a BIP-39 mnemonic.

Layout (BIP-84 on top of BIP-32/BIP-44; coin type from SLIP-44):

* account: ``m/84'/{coin}'/0'`` with ``coin`` = 0 on mainnet and 1 on every test network
  (testnet, signet, regtest);
* key ``(change, index)``: ``m/84'/{coin}'/0'/{change}/{index}``, ``change`` 0 for the
  external (receive) chain and 1 for the internal (change) chain;
* address: P2WPKH, ``bech32(hrp, 0, HASH160(compressed pubkey))`` (BIP-141, BIP-173).

Pool key generations (issue 12, key rotation): generation ``g`` of the Bitcoin pool is the
change chain of BIP-84 account ``g``, ``m/84'/{coin}'/{g}'/1/i`` (generation 0 is today's
``m/84'/{coin}'/0'/1/i``). A stored coin names its chain by one integer, ``key_chain = 2 *
account + change`` (:func:`coin_key_path`), so account 0 keeps its 0 (deposit) and 1 (pool and
change) and generation ``g``'s coins are ``2g + 1`` (:func:`pool_key_chain`): no migration.

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


def account_key_path(network: str, account: int, change: int, index: int) -> str:
    """The BIP-32 path of key ``(change, index)`` of BIP-84 account ``account``:
    ``m/84'/{coin}'/{account}'/{change}/{index}``.

    Raises:
        ValueError: ``account`` outside ``[0, 2**31)``, ``change`` not 0 or 1, ``index`` outside
            ``[0, 2**31)``.
        ConfigError: unknown network.
    """
    _check_index(account)
    _check_change(change)
    _check_index(index)
    return f"m/{BIP84_PURPOSE}'/{get_network(network).bip84_coin_type}'/{account}'/{change}/{index}"


def pool_key_chain(generation: int) -> int:
    """The stored ``key_chain`` of pool generation ``generation``'s keys (``2g + 1``: the change
    chain of account ``g``; generation 0 is ``1``).

    Raises:
        ValueError: ``generation`` outside ``[0, 2**31)``.
    """
    _check_index(generation)
    return 2 * generation + 1


def generation_of_key_chain(key_chain: int) -> int | None:
    """The pool generation whose keys a stored ``key_chain`` names, or ``None`` for a receive
    chain (even: deposit keys, owned by mixes, not pool-generation keys).

    Raises:
        ValueError: a negative ``key_chain``.
    """
    if isinstance(key_chain, bool) or not isinstance(key_chain, int) or key_chain < 0:
        raise ValueError(f"key_chain must be an int >= 0, got {key_chain!r}")
    return key_chain // 2 if key_chain % 2 else None


def coin_key_path(network: str, key_chain: int, index: int) -> str:
    """The BIP-32 path of a stored coin's key: ``key_chain = 2 * account + change`` (0 and 1 are
    account 0's receive and change chains, exactly :func:`key_path`).

    Raises:
        ValueError: a negative ``key_chain``, an account or index outside ``[0, 2**31)``.
        ConfigError: unknown network.
    """
    if isinstance(key_chain, bool) or not isinstance(key_chain, int) or key_chain < 0:
        raise ValueError(f"key_chain must be an int >= 0, got {key_chain!r}")
    account, change = divmod(key_chain, 2)
    return account_key_path(network, account, change, index)


def generation_key_prefix(network: str, generation: int) -> str:
    """The path prefix every key of pool generation ``generation`` starts with,
    ``m/84'/{coin}'/{g}'/1/`` (the generation's key reference in ``pool_generations``; a
    :class:`~mixhouse.keys.audited.RetiredKeyGuard` refuses by it, a generation's keys being
    unbounded).

    Raises:
        ValueError: ``generation`` outside ``[0, 2**31)``.
        ConfigError: unknown network.
    """
    return account_key_path(network, generation, 1, 0).removesuffix("0")


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

    __slots__ = ("_account", "_accounts", "_chains", "_fingerprint", "_leaves", "_net", "_network", "_root", "_version")

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
        # Kept for the accounts of later pool generations (key rotation), derived on first use.
        self._root: Any = root
        self._accounts: dict[int, Any] = {ACCOUNT: self._account}
        self._chains: dict[tuple[int, int], Any] = {}
        # (account, change, index) -> (private key, compressed public key, address)
        self._leaves: dict[tuple[int, int, int], tuple[bytes, bytes, str]] = {}

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

    def split_any_path(self, path: str) -> tuple[int, int, int]:
        """``(account, change, index)`` of a key path of any BIP-84 account of this keyring's
        network, e.g. ``"m/84'/1'/2'/1/3"`` -> ``(2, 1, 3)`` (pool generation 2's key 3).

        Raises:
            ValueError: not such a path.
        """
        prefix = f"m/{BIP84_PURPOSE}'/{self._network.bip84_coin_type}'/"
        parts = path[len(prefix) :].split("/") if path.startswith(prefix) else []
        if len(parts) != 3 or not parts[0].endswith("'") or not all(p.isdigit() for p in (parts[0][:-1], *parts[1:])):
            raise ValueError(f"{path!r} is not a BIP-84 key path of {prefix}")
        account, change, index = int(parts[0][:-1]), int(parts[1]), int(parts[2])
        _check_index(account)
        _check_change(change)
        _check_index(index)
        return account, change, index

    def private_key_at(self, path: str) -> bytes:
        """The 32-byte private key of a key path of any account (:meth:`split_any_path`).

        Raises:
            ValueError: as :meth:`split_any_path`.
        """
        account, change, index = self.split_any_path(path)
        return self._leaf(change, index, account=account)[0]

    def _leaf(self, change: int, index: int, *, account: int = ACCOUNT) -> tuple[bytes, bytes, str]:
        # Checked before the cache: True == 1 would otherwise find key (1, index).
        _check_change(change)
        _check_index(index)
        _check_index(account)
        leaf = self._leaves.get((account, change, index))
        if leaf is None:
            chain = self._chains.get((account, change))
            if chain is None:
                base = self._accounts.get(account)
                if base is None:
                    coin = self._network.bip84_coin_type
                    base = self._root.derive([BIP84_PURPOSE + HARDENED, coin + HARDENED, account + HARDENED])
                    self._accounts[account] = base
                chain = base.child(change)
                self._chains[(account, change)] = chain
            key = chain.child(index)
            private = bytes(key.key.serialize())
            public = bytes(key.sec())
            address = bech32.encode(self._network.bech32_hrp, 0, hashes.hash160(public))
            leaf = (private, public, str(address))
            self._leaves[(account, change, index)] = leaf
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
