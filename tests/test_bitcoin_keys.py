"""BIP-84 keys: the official test vectors of BIP-84 and the per-network prefixes."""

from __future__ import annotations

import pytest
from embit import bech32, bip32, hashes  # type: ignore[import-untyped]
from embit.descriptor.checksum import checksum  # type: ignore[import-untyped]
from embit.ec import PrivateKey  # type: ignore[import-untyped]

from mixhouse.chains.bitcoin.networks import normalize_address, script_pubkey
from mixhouse.errors import ConfigError
from mixhouse.keys.bip84 import Bip84Keyring

# https://github.com/bitcoin/bips/blob/master/bip-0084.mediawiki#test-vectors
MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
BIP84_ACCOUNT_ZPUB = (
    "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs"
)
# m/84'/0'/0'/0/0, m/84'/0'/0'/0/1 and m/84'/0'/0'/1/0: (WIF private key, pubkey, address)
BIP84_KEYS = {
    (0, 0): (
        "KyZpNDKnfs94vbrwhJneDi77V6jF64PWPF8x5cdJb8ifgg2DUc9d",
        "0330d54fd0dd420a6e5f8d3624f5f3482cae350f79d5f0753bf5beef9c2d91af3c",
        "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu",
    ),
    (0, 1): (
        "Kxpf5b8p3qX56DKEe5NqWbNUP9MnqoRFzZwHRtsFqhzuvUJsYZCy",
        "03e775fd51f0dfb8cd865d9ff1cca2a158cf651fe997fdc9fee9c1d3b5e995ea77",
        "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g",
    ),
    (1, 0): (
        "KxuoxufJL5csa1Wieb2kp29VNdn92Us8CoaUG3aGtPtcF3AzeXvF",
        "03025324888e429ab8e3dbaf1f7802648b9cd01e9b418485c5fa4c1b9b5700e1a6",
        "bc1q8c6fshw2dlwun7ekn9qwf37cu2rn755upcp6el",
    ),
}


@pytest.fixture(scope="module")
def mainnet() -> Bip84Keyring:
    return Bip84Keyring(MNEMONIC, "mainnet")


@pytest.fixture(scope="module")
def regtest() -> Bip84Keyring:
    return Bip84Keyring(MNEMONIC, "regtest")


def _wif_secret(wif: str) -> bytes:
    return bytes(PrivateKey.from_wif(wif).secret)


def test_bip84_first_receive_and_change_addresses(mainnet: Bip84Keyring) -> None:
    assert mainnet.address(0, 0) == "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
    assert mainnet.address(1, 0) == "bc1q8c6fshw2dlwun7ekn9qwf37cu2rn755upcp6el"


@pytest.mark.parametrize(("change", "index"), sorted(BIP84_KEYS))
def test_bip84_vector_keys(mainnet: Bip84Keyring, change: int, index: int) -> None:
    wif, pubkey, address = BIP84_KEYS[(change, index)]
    assert mainnet.private_key(change, index) == _wif_secret(wif)
    assert mainnet.public_key(change, index).hex() == pubkey
    assert mainnet.address(change, index) == address
    assert mainnet.path(change, index) == f"m/84'/0'/0'/{change}/{index}"


def test_bip84_account_zpub_and_xpub(mainnet: Bip84Keyring) -> None:
    assert mainnet.account_xpub() == BIP84_ACCOUNT_ZPUB
    xpub = mainnet.account_xpub(slip132=False)
    assert xpub.startswith("xpub")
    # Same key, other version bytes: the 74 bytes after the version are identical.
    plain = bip32.HDKey.from_base58(xpub)
    slip = bip32.HDKey.from_base58(BIP84_ACCOUNT_ZPUB)
    assert plain.sec() == slip.sec()
    assert plain.chain_code == slip.chain_code
    # Deriving receive key 0 from the watch-only account key gives the vector's address.
    child = plain.derive([0, 0])
    assert bech32.encode("bc", 0, hashes.hash160(child.sec())) == BIP84_KEYS[(0, 0)][2]


def test_mainnet_descriptor(mainnet: Bip84Keyring) -> None:
    xpub = mainnet.account_xpub(slip132=False)
    desc = mainnet.descriptor()
    body, _, check = desc.partition("#")
    # 73c5da0a is the master fingerprint of the "abandon ... about" mnemonic.
    assert body == f"wpkh([73c5da0a/84h/0h/0h]{xpub}/0/*)"
    assert check == checksum(body)
    assert len(check) == 8
    assert mainnet.descriptor(1).split("#")[0].endswith("/1/*)")
    assert mainnet.fingerprint.hex() == "73c5da0a"


def test_regtest_addresses_and_keys(regtest: Bip84Keyring) -> None:
    for index in range(5):
        address = regtest.address(0, index)
        assert address.startswith("bcrt1q")
        assert normalize_address(address, "regtest") == address
        assert script_pubkey(address, "regtest") == b"\x00\x14" + hashes.hash160(regtest.public_key(0, index))
    assert regtest.address(1, 0).startswith("bcrt1q")
    assert regtest.path(0, 3) == "m/84'/1'/0'/0/3"
    assert regtest.account_xpub().startswith("vpub")
    assert regtest.account_xpub(slip132=False).startswith("tpub")
    assert regtest.descriptor().startswith("wpkh([73c5da0a/84h/1h/0h]tpub")


def test_testnet_and_signet_share_coin_type_1(regtest: Bip84Keyring) -> None:
    testnet = Bip84Keyring(MNEMONIC, "testnet")
    signet = Bip84Keyring(MNEMONIC, "signet")
    # Well-known testnet address of this mnemonic at m/84'/1'/0'/0/0.
    assert testnet.address(0, 0) == "tb1q6rz28mcfaxtmd6v789l9rrlrusdprr9pqcpvkl"
    assert signet.address(0, 0) == testnet.address(0, 0)
    # Same key on regtest (coin type 1), only the HRP differs.
    assert testnet.private_key(0, 0) == regtest.private_key(0, 0)
    assert regtest.address(0, 0) == "bcrt1q6rz28mcfaxtmd6v789l9rrlrusdprr9pz3cppk"
    assert testnet.account_xpub() == regtest.account_xpub()


def test_passphrase_changes_keys(mainnet: Bip84Keyring) -> None:
    other = Bip84Keyring(MNEMONIC, "mainnet", passphrase="TREZOR")
    assert other.address(0, 0) != mainnet.address(0, 0)
    assert other.fingerprint != mainnet.fingerprint


def test_whitespace_is_ignored(mainnet: Bip84Keyring) -> None:
    messy = "  " + MNEMONIC.replace(" ", "\n  ", 3) + "\t"
    assert Bip84Keyring(messy, "mainnet").address(0, 0) == mainnet.address(0, 0)


def test_keys_are_cached(mainnet: Bip84Keyring) -> None:
    assert mainnet.private_key(0, 7) is mainnet.private_key(0, 7)
    assert mainnet.address(0, 7) is mainnet.address(0, 7)


@pytest.mark.parametrize(
    "mnemonic",
    [
        "",
        "   ",
        # bad checksum: "abandon" x 12
        " ".join(["abandon"] * 12),
        # unknown word
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon zzzsecret",
        # wrong length
        "abandon abandon abandon about",
    ],
)
def test_invalid_mnemonic_raises_config_error_without_words(mnemonic: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Bip84Keyring(mnemonic, "mainnet")
    assert "zzzsecret" not in str(excinfo.value)
    assert "abandon" not in str(excinfo.value)
    assert excinfo.value.__cause__ is None


def test_unknown_network() -> None:
    with pytest.raises(ConfigError):
        Bip84Keyring(MNEMONIC, "dogecoin")


@pytest.mark.parametrize(("change", "index"), [(2, 0), (-1, 0), (0, -1), (0, 2**31), (True, 0)])
def test_invalid_change_or_index(mainnet: Bip84Keyring, change: int, index: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        mainnet.address(change, index)


def test_repr_hides_secrets(mainnet: Bip84Keyring) -> None:
    text = repr(mainnet)
    assert "abandon" not in text
    assert mainnet.private_key(0, 0).hex() not in text
