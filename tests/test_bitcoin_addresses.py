"""Bitcoin addresses: BIP-173 / BIP-350 test vectors, base58check, cross-network rejection,
and the address <-> scriptPubKey round trip."""

from __future__ import annotations

import pytest
from embit import base58, bech32  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st

from mixhouse.chains.bitcoin.networks import (
    NETWORKS,
    Network,
    address_of_script,
    get_network,
    normalize_address,
    script_pubkey,
)
from mixhouse.errors import ConfigError, InvalidAddress

# --- BIP-350 "Test vectors for v0-v16 native segregated witness addresses", valid part ------
# (address, scriptPubKey hex). The first two and the sixth are BIP-173's valid vectors too.
BIP350_VALID = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    (
        "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
        "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
    ),
    (
        "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
        "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6",
    ),
    ("BC1SW50QGDZ25J", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "5210751e76e8199196d454941c45d1b3a323"),
    (
        "tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
        "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
    ),
    (
        "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
        "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
    ),
    (
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
        "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
    ),
]


def _network_of(address: str) -> str:
    return "mainnet" if address.lower().startswith("bc1") else "testnet"


def _is_supported(spk_hex: str) -> bool:
    """P2WPKH, P2WSH or P2TR: the witness outputs Mixhouse pays to."""
    spk = bytes.fromhex(spk_hex)
    return (spk[0] == 0x00 and len(spk) in {22, 34}) or (spk[0] == 0x51 and len(spk) == 34)


@pytest.mark.parametrize(("address", "spk_hex"), [v for v in BIP350_VALID if _is_supported(v[1])])
def test_bip350_valid_supported(address: str, spk_hex: str) -> None:
    network = _network_of(address)
    canonical = normalize_address(address, network)
    assert canonical == address.lower()
    assert script_pubkey(address, network).hex() == spk_hex
    assert address_of_script(bytes.fromhex(spk_hex), network) == canonical


@pytest.mark.parametrize(("address", "spk_hex"), [v for v in BIP350_VALID if not _is_supported(v[1])])
def test_bip350_valid_but_future_witness_versions_are_refused(address: str, spk_hex: str) -> None:
    # Valid strings (the checksum verifies), but v1 with a non-32-byte program and v2..v16 are
    # anyone-can-spend today: paying to them would lose the money.
    assert bech32.bech32_decode(address)[0] == bech32.Encoding.BECH32M
    with pytest.raises(InvalidAddress, match="unsupported"):
        normalize_address(address, _network_of(address))
    assert address_of_script(bytes.fromhex(spk_hex), _network_of(address)) is None


# --- BIP-350 invalid addresses (reason as given in the BIP) ---------------------------------
BIP350_INVALID = [
    ("tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut", "invalid human-readable part"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd", "bech32 instead of bech32m"),
    ("tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf", "bech32 instead of bech32m"),
    ("BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL", "bech32 instead of bech32m"),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", "bech32m instead of bech32"),
    ("tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47", "bech32m instead of bech32"),
    ("bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4", "invalid character in checksum"),
    ("BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R", "invalid witness version"),
    ("bc1pw5dgrnzv", "invalid program length (1 byte)"),
    (
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav",
        "invalid program length (41 bytes)",
    ),
    ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "invalid program length for witness version 0"),
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq", "mixed case"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf", "zero padding of more than 4 bits"),
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j", "non-zero padding in 8-to-5 conversion"),
    ("bc1gmk9yu", "empty data section"),
]

# --- BIP-173 invalid addresses --------------------------------------------------------------
BIP173_INVALID = [
    ("tc1qw508d6qejxtdg4y5r3zarvary0c5xw7kg3g4ty", "invalid human-readable part"),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "invalid checksum"),
    ("BC13W508D6QEJXTDG4Y5R3ZARVARY0C5XW7KN40WF2", "invalid witness version"),
    ("bc1rw5uspcuh", "invalid program length"),
    (
        "bc10w508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kw5rljs90",
        "invalid program length",
    ),
    ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "invalid program length for witness version 0"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sL5k7", "mixed case"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvqyzf3du", "zero padding of more than 4 bits"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3pjxtptv", "non-zero padding in 8-to-5 conversion"),
    ("bc1gmk9yu", "empty data section"),
]

# Reasons under which the string itself has a valid checksum: if one of these failed only on
# its checksum, the vector would have been mistyped here and would test nothing.
_CHECKSUM_OK_REASONS = (
    "invalid human-readable part",
    "instead of",
    "invalid witness version",
    "invalid program length",
    "zero padding",
    "non-zero padding",
    "empty data section",
)


@pytest.mark.parametrize(("address", "reason"), BIP350_INVALID + BIP173_INVALID)
def test_bip173_bip350_invalid(address: str, reason: str) -> None:
    if reason.startswith(_CHECKSUM_OK_REASONS):
        assert bech32.bech32_decode(address)[0] is not None, "vector mistyped: its checksum fails"
    for network in NETWORKS:
        with pytest.raises(InvalidAddress):
            normalize_address(address, network)
        with pytest.raises(InvalidAddress):
            script_pubkey(address, network)


def test_wrong_encoding_pairs_name_the_rule() -> None:
    with pytest.raises(InvalidAddress, match="bech32m"):
        normalize_address("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd", "mainnet")
    with pytest.raises(InvalidAddress, match=r"bech32 \(BIP-173\)"):
        normalize_address("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", "mainnet")


def test_mixed_case_rejected_upper_case_accepted() -> None:
    upper = "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4"
    assert normalize_address(upper, "mainnet") == upper.lower()
    mixed = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kV8F3T4"
    with pytest.raises(InvalidAddress):
        normalize_address(mixed, "mainnet")


# --- Cross-network rejection ----------------------------------------------------------------
MAINNET_P2WPKH = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
TESTNET_P2WSH = "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7"
# Same 20-byte program as MAINNET_P2WPKH, encoded for regtest.
REGTEST_P2WPKH = str(bech32.encode("bcrt", 0, bytes.fromhex("751e76e8199196d454941c45d1b3a323f1433bd6")))


def test_mainnet_address_on_regtest_says_so() -> None:
    with pytest.raises(InvalidAddress, match="mainnet address, not a regtest address"):
        normalize_address(MAINNET_P2WPKH, "regtest")
    with pytest.raises(InvalidAddress, match="mainnet"):
        normalize_address("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "regtest")


def test_regtest_address_only_on_regtest() -> None:
    assert REGTEST_P2WPKH.startswith("bcrt1q")
    assert normalize_address(REGTEST_P2WPKH, "regtest") == REGTEST_P2WPKH
    for network in ("mainnet", "testnet", "signet"):
        with pytest.raises(InvalidAddress, match="regtest address"):
            normalize_address(REGTEST_P2WPKH, network)


def test_testnet_bech32_not_on_mainnet_or_regtest() -> None:
    assert normalize_address(TESTNET_P2WSH, "signet") == TESTNET_P2WSH
    for network in ("mainnet", "regtest"):
        with pytest.raises(InvalidAddress, match="testnet"):
            normalize_address(TESTNET_P2WSH, network)


def test_unknown_network_is_config_error() -> None:
    with pytest.raises(ConfigError):
        normalize_address(MAINNET_P2WPKH, "litecoin")
    assert get_network("main").name == "mainnet"
    assert get_network("test").name == "testnet"


# --- Base58check ----------------------------------------------------------------------------
# Examples from the Bitcoin wiki ("Technical background of version 1 Bitcoin addresses", BIP-13).
BASE58_VALID = [
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "mainnet", "76a91477bff20c60e522dfaa3350c39b030a5d004e839a88ac"),
    ("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", "mainnet", "a914b472a266d0bd89c13706a4132ccfb16f7c3b9fcb87"),
]


@pytest.mark.parametrize(("address", "network", "spk_hex"), BASE58_VALID)
def test_base58_valid(address: str, network: str, spk_hex: str) -> None:
    assert normalize_address(address, network) == address
    assert normalize_address(f"  {address}\n", network) == address
    assert script_pubkey(address, network).hex() == spk_hex
    assert address_of_script(bytes.fromhex(spk_hex), network) == address


def test_base58_testnet_prefixes_shared_with_regtest() -> None:
    h = bytes(range(20))
    p2pkh = str(base58.encode_check(b"\x6f" + h))
    p2sh = str(base58.encode_check(b"\xc4" + h))
    assert p2pkh[0] in "mn"
    assert p2sh[0] == "2"
    for network in ("testnet", "signet", "regtest"):
        assert script_pubkey(p2pkh, network) == b"\x76\xa9\x14" + h + b"\x88\xac"
        assert script_pubkey(p2sh, network) == b"\xa9\x14" + h + b"\x87"
    with pytest.raises(InvalidAddress, match="not a mainnet address"):
        normalize_address(p2pkh, "mainnet")


@pytest.mark.parametrize(
    "address",
    [
        "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN3",  # checksum
        "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN",  # truncated
        "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN20",  # 0 is not base58
        "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLY",  # case matters in base58
        "",
        "   ",
        "bc1",
        "1" * 5_000,
    ],
)
def test_base58_invalid(address: str) -> None:
    with pytest.raises(InvalidAddress):
        normalize_address(address, "mainnet")


def test_base58_unknown_version_byte() -> None:
    address = str(base58.encode_check(b"\x30" + bytes(20)))  # a Litecoin P2PKH version
    with pytest.raises(InvalidAddress, match="unknown version byte"):
        normalize_address(address, "mainnet")


def test_base58_wrong_payload_length() -> None:
    address = str(base58.encode_check(b"\x00" + bytes(21)))
    with pytest.raises(InvalidAddress, match="20-byte hash"):
        normalize_address(address, "mainnet")


# --- Round trips ----------------------------------------------------------------------------
_templates = st.one_of(
    st.binary(min_size=20, max_size=20).map(lambda h: b"\x76\xa9\x14" + h + b"\x88\xac"),
    st.binary(min_size=20, max_size=20).map(lambda h: b"\xa9\x14" + h + b"\x87"),
    st.binary(min_size=20, max_size=20).map(lambda h: b"\x00\x14" + h),
    st.binary(min_size=32, max_size=32).map(lambda h: b"\x00\x20" + h),
    st.binary(min_size=32, max_size=32).map(lambda h: b"\x51\x20" + h),
)


@given(script=_templates, network=st.sampled_from(sorted(NETWORKS)))
def test_script_address_round_trip(script: bytes, network: str) -> None:
    address = address_of_script(script, network)
    assert address is not None
    assert normalize_address(address, network) == address
    assert script_pubkey(address, network) == script
    if address[:4].lower() in {"bc1q", "tb1q"} or address.startswith(("bc1p", "tb1p", "bcrt1")):
        assert address == address.lower()
        assert normalize_address(address.upper(), network) == address


@given(script=st.binary(max_size=60))
def test_non_standard_scripts_have_no_address(script: bytes) -> None:
    address = address_of_script(script, "mainnet")
    if address is not None:
        assert script_pubkey(address, "mainnet") == script


@pytest.mark.parametrize(
    "script",
    [
        b"\x6a\x04test",  # OP_RETURN
        b"\x52\x21" + bytes(33) + b"\x21" + bytes(33) + b"\x52\xae",  # bare 2-of-2 multisig
        b"\x52\x02\x75\x1e",  # witness v2
        b"\x51\x14" + bytes(20),  # v1 with a 20-byte program
        b"\x00\x15" + bytes(21),  # v0 with 21 bytes
        b"",
    ],
)
def test_unsupported_scripts(script: bytes) -> None:
    assert address_of_script(script, "mainnet") is None


def test_network_table_matches_bitcoin_core() -> None:
    assert NETWORKS["mainnet"] == Network("mainnet", "bc", 0x00, 0x05, 0)
    for name in ("testnet", "signet"):
        assert NETWORKS[name] == Network(name, "tb", 0x6F, 0xC4, 1)
    assert NETWORKS["regtest"] == Network("regtest", "bcrt", 0x6F, 0xC4, 1)
