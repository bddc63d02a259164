"""What the software signer's seeds show in public: fingerprints, account xpubs, the EVM pool
address, for the operator's records and watch-only wallets (``mixhouse keys export-xpub``).

Nothing here returns a private key: a :class:`PublicKeys` holds only what can be printed.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from embit import bip32, bip39  # type: ignore[import-untyped]
from embit.networks import NETWORKS  # type: ignore[import-untyped]

from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.keys.hd import POOL_PATH, HdKeyring
from mixhouse.keys.keystore import Mnemonics

HARDENED = 2**31
# BIP-44 account 0 of Ethereum (coin type 60, SLIP-44): the deposit keys m/44'/60'/0'/0/i.
EVM_DEPOSIT_ACCOUNT = "m/44'/60'/0'"


@dataclass(frozen=True)
class PublicKeys:
    """The public side of the two seeds.

    Attributes:
        evm_fingerprint: BIP-32 master key fingerprint of the EVM seed (8 hex digits).
        evm_pool_address: the EIP-55 address of the pool key (``m/44'/60'/1'/0/0``).
        evm_deposit_xpub: the ``xpub`` of the deposit account ``m/44'/60'/0'`` (whoever has it
            can list every deposit address: keep it to the operator).
        bitcoin_fingerprint: BIP-32 master key fingerprint of the Bitcoin seed.
        bitcoin_network: the network the Bitcoin keys are shown for.
        bitcoin_account_path: ``m/84'/c'/0'``.
        bitcoin_zpub: the BIP-84 account key with SLIP-132 versions (``zpub`` / ``vpub``).
        bitcoin_xpub: the same key with plain BIP-32 versions (``xpub`` / ``tpub``).
        bitcoin_receive_descriptor: ``wpkh([fp/84h/ch/0h]xpub/0/*)#checksum`` (deposit keys).
        bitcoin_change_descriptor: the same for ``/1/*`` (pool and change keys).
    """

    evm_fingerprint: str
    evm_pool_address: str
    evm_deposit_xpub: str
    bitcoin_fingerprint: str
    bitcoin_network: str
    bitcoin_account_path: str
    bitcoin_zpub: str
    bitcoin_xpub: str
    bitcoin_receive_descriptor: str
    bitcoin_change_descriptor: str


def fingerprint(mnemonic: str) -> str:
    """The BIP-32 master key fingerprint (first 4 bytes of HASH160 of the master public key, as
    8 hex digits) of a BIP-39 phrase with no passphrase: what a hardware wallet shows for it.

    Raises:
        ValueError: not a valid BIP-39 phrase (the message does not repeat it).
    """
    words = " ".join(unicodedata.normalize("NFKD", mnemonic).split())
    if not bip39.mnemonic_is_valid(words):
        raise ValueError("not a valid BIP-39 phrase")
    return bytes(bip32.HDKey.from_seed(bip39.mnemonic_to_seed(words)).my_fingerprint).hex()


def _evm_deposit_xpub(mnemonic: str) -> str:
    words = " ".join(unicodedata.normalize("NFKD", mnemonic).split())
    root = bip32.HDKey.from_seed(bip39.mnemonic_to_seed(words))
    account = root.derive([44 + HARDENED, 60 + HARDENED, 0 + HARDENED])
    return str(account.to_public().to_base58(version=NETWORKS["main"]["xpub"]))


def public_keys(mnemonics: Mnemonics, bitcoin_network: str) -> PublicKeys:
    """The fingerprints, xpubs and pool address of ``mnemonics`` (Bitcoin keys on
    ``bitcoin_network``: ``"mainnet"``, ``"testnet"``, ``"signet"`` or ``"regtest"``).

    Raises:
        ValueError: a phrase is not valid BIP-39.
        ConfigError: unknown network, or a phrase the keyrings refuse.
    """
    bitcoin = Bip84Keyring(mnemonics.bitcoin, bitcoin_network)
    return PublicKeys(
        evm_fingerprint=fingerprint(mnemonics.evm),
        evm_pool_address=HdKeyring(mnemonics.evm).address(POOL_PATH),
        evm_deposit_xpub=_evm_deposit_xpub(mnemonics.evm),
        bitcoin_fingerprint=bitcoin.fingerprint.hex(),
        bitcoin_network=bitcoin.network.name,
        bitcoin_account_path=bitcoin.account_path(),
        bitcoin_zpub=bitcoin.account_xpub(slip132=True),
        bitcoin_xpub=bitcoin.account_xpub(slip132=False),
        bitcoin_receive_descriptor=bitcoin.descriptor(0),
        bitcoin_change_descriptor=bitcoin.descriptor(1),
    )
