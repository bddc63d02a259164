"""Bitcoin networks and addresses.

Network parameters are Bitcoin Core's (``src/kernel/chainparams.cpp``):

============  ===========  =================  =================  ==================
network       bech32 HRP   P2PKH version      P2SH version       BIP-44/84 coin
============  ===========  =================  =================  ==================
mainnet       ``bc``       ``0x00`` ("1...")  ``0x05`` ("3...")  0
testnet       ``tb``       ``0x6f`` ("m/n")   ``0xc4`` ("2...")  1
testnet4      ``tb``       ``0x6f``           ``0xc4``           1
signet        ``tb``       ``0x6f``           ``0xc4``           1
regtest       ``bcrt``     ``0x6f``           ``0xc4``           1
============  ===========  =================  =================  ==================

Consequences worth knowing: testnet, testnet4 and signet addresses are indistinguishable, and a
base58 testnet address is also a valid regtest address (same version bytes, exactly as in
Bitcoin Core); only bech32 addresses tell regtest (``bcrt1...``) apart.

Address forms accepted by :func:`normalize_address` (everything else is rejected):

* P2PKH and P2SH: base58check (version byte + 20-byte hash + 4-byte double-SHA256 checksum);
* P2WPKH (20-byte program) and P2WSH (32-byte program): witness version 0, **bech32**
  (BIP-173, BIP-141);
* P2TR (32-byte program): witness version 1, **bech32m** (BIP-350, BIP-341).

Other witness versions and program lengths are valid BIP-350 strings but are rejected: they
are "future" outputs that anyone can spend until a soft fork gives them meaning, so a payout
to one would be lost.

Names: the canonical network names are ``mainnet``, ``testnet``, ``testnet4``, ``signet``
and ``regtest``; Bitcoin Core's ``main`` and ``test`` (``-chain=`` values) are accepted as
aliases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embit import base58, bech32  # type: ignore[import-untyped]
from embit.networks import NETWORKS as _EMBIT_NETWORKS  # type: ignore[import-untyped]

from mixhouse.errors import ConfigError, InvalidAddress


@dataclass(frozen=True, slots=True)
class Network:
    """Address and derivation parameters of one Bitcoin network.

    Attributes:
        name: the canonical name (``"mainnet"``, ``"testnet"``, ``"testnet4"``, ``"signet"``,
            ``"regtest"``).
        bech32_hrp: the human-readable part of segwit addresses (BIP-173), lower-case.
        pubkey_hash_prefix: the base58check version byte of P2PKH addresses.
        script_hash_prefix: the base58check version byte of P2SH addresses.
        bip84_coin_type: the hardened coin-type level of BIP-44/84 paths (SLIP-44: 0 for
            mainnet, 1 for every test network).
    """

    name: str
    bech32_hrp: str
    pubkey_hash_prefix: int
    script_hash_prefix: int
    bip84_coin_type: int


NETWORKS: dict[str, Network] = {
    "mainnet": Network("mainnet", "bc", 0x00, 0x05, 0),
    "testnet": Network("testnet", "tb", 0x6F, 0xC4, 1),
    "testnet4": Network("testnet4", "tb", 0x6F, 0xC4, 1),
    "signet": Network("signet", "tb", 0x6F, 0xC4, 1),
    "regtest": Network("regtest", "bcrt", 0x6F, 0xC4, 1),
}

# Bitcoin Core's -chain= names for the same networks.
_ALIASES = {"main": "mainnet", "test": "testnet"}

# The embit network table (extended-key versions, WIF prefix) of each network.
_EMBIT_NAMES = {
    "mainnet": "main",
    "testnet": "test",
    "testnet4": "test",
    "signet": "signet",
    "regtest": "regtest",
}

# Script templates (BIP-16, BIP-141, BIP-341).
_OP_0 = 0x00
_OP_1 = 0x51
_P2PKH_HEAD = b"\x76\xa9\x14"  # OP_DUP OP_HASH160 <20>
_P2PKH_TAIL = b"\x88\xac"  # OP_EQUALVERIFY OP_CHECKSIG
_P2SH_HEAD = b"\xa9\x14"  # OP_HASH160 <20>
_P2SH_TAIL = b"\x87"  # OP_EQUAL


def get_network(name: str) -> Network:
    """The :class:`Network` called ``name`` (or one of Bitcoin Core's aliases ``main``/``test``).

    Raises:
        ConfigError: no such network.
    """
    key = _ALIASES.get(name, name)
    network = NETWORKS.get(key)
    if network is None:
        known = ", ".join(sorted(NETWORKS))
        raise ConfigError(f"unknown Bitcoin network {name!r} (known: {known})")
    return network


def embit_network(name: str) -> dict[str, Any]:
    """embit's parameter table (``embit.networks.NETWORKS[...]``) for network ``name``:
    extended-key version bytes (xpub/tpub, SLIP-132 zpub/vpub) and the WIF prefix.

    Raises:
        ConfigError: no such network.
    """
    table: dict[str, Any] = _EMBIT_NETWORKS[_EMBIT_NAMES[get_network(name).name]]
    return table


def _networks_with_hrp(hrp: str) -> list[str]:
    return [n.name for n in NETWORKS.values() if n.bech32_hrp == hrp]


def _networks_with_prefix(prefix: int) -> list[str]:
    return [n.name for n in NETWORKS.values() if prefix in {n.pubkey_hash_prefix, n.script_hash_prefix}]


def _decode_segwit(text: str, net: Network) -> tuple[int, bytes]:
    """Decode a bech32/bech32m segwit address of ``net`` into (witness version, program).

    Implements the decoding rules of BIP-173 as amended by BIP-350, then keeps the three
    output types we can pay to.
    """
    encoding, hrp, data = bech32.bech32_decode(text)
    if encoding is None or hrp is None or data is None:
        # embit returns (None, None, None) for: a character outside the charset or outside
        # ASCII 33..126, mixed case, no separator, more than 90 characters, a checksum that is
        # neither bech32 nor bech32m.
        raise InvalidAddress(f"{text!r} is not a valid bech32/bech32m string (bad checksum, case or character)")
    if hrp != net.bech32_hrp:
        others = _networks_with_hrp(hrp)
        if others:
            raise InvalidAddress(f"{text!r} is a {'/'.join(others)} address, not a {net.name} address")
        raise InvalidAddress(f"{text!r} has prefix {hrp!r}; {net.name} addresses start with {net.bech32_hrp}1")
    if not data:
        raise InvalidAddress(f"{text!r} has an empty data part")
    version = data[0]
    if version > 16:
        raise InvalidAddress(f"{text!r} has invalid witness version {version}")
    program_5bit = data[1:]
    converted = bech32.convertbits(program_5bit, 5, 8, False)
    if converted is None:
        raise InvalidAddress(f"{text!r} has invalid padding in its witness program")
    program = bytes(converted)
    if not 2 <= len(program) <= 40:
        raise InvalidAddress(f"{text!r} has a witness program of {len(program)} bytes (BIP-141: 2 to 40)")
    if version == 0 and len(program) not in {20, 32}:
        raise InvalidAddress(f"{text!r}: a version 0 witness program must be 20 or 32 bytes")
    expected = bech32.Encoding.BECH32 if version == 0 else bech32.Encoding.BECH32M
    if encoding != expected:
        want = "bech32 (BIP-173)" if version == 0 else "bech32m (BIP-350)"
        raise InvalidAddress(f"{text!r}: witness version {version} must be encoded with {want}")
    if version == 1 and len(program) != 32:
        raise InvalidAddress(f"{text!r}: unsupported witness version 1 program of {len(program)} bytes")
    if version > 1:
        raise InvalidAddress(f"{text!r}: unsupported witness version {version} (not spendable today)")
    return version, program


def _decode_base58(text: str, net: Network) -> tuple[int, bytes]:
    """Decode a base58check P2PKH/P2SH address of ``net`` into (version byte, 20-byte hash)."""
    try:
        raw = bytes(base58.decode_check(text))
    except (ValueError, IndexError):
        raise InvalidAddress(f"{text!r} is not a valid base58check address (bad character or checksum)") from None
    if len(raw) != 21:
        raise InvalidAddress(f"{text!r} does not encode a version byte and a 20-byte hash")
    prefix = raw[0]
    if prefix not in {net.pubkey_hash_prefix, net.script_hash_prefix}:
        others = _networks_with_prefix(prefix)
        if others:
            raise InvalidAddress(f"{text!r} is a {'/'.join(others)} address, not a {net.name} address")
        raise InvalidAddress(f"{text!r} has unknown version byte 0x{prefix:02x}")
    return prefix, raw[1:]


# Longer than any address (bech32 strings stop at 90 characters, base58 ones at about 35):
# refused before decoding, so a huge input costs nothing.
_MAX_ADDRESS_LENGTH = 100


def _clean(text: str) -> str:
    cleaned = text.strip()
    if not cleaned:
        raise InvalidAddress("the address is empty")
    if len(cleaned) > _MAX_ADDRESS_LENGTH:
        raise InvalidAddress(f"an address of {len(cleaned)} characters is too long")
    return cleaned


def _looks_segwit(text: str) -> bool:
    """True when ``text`` starts with ``<hrp>1`` of some network (case-insensitively).

    No base58check address of ours can start like that: mainnet ones start with 1 or 3,
    testnet ones with m, n or 2.
    """
    lowered = text.lower()
    return any(lowered.startswith(n.bech32_hrp + "1") for n in NETWORKS.values())


def normalize_address(text: str, network: str) -> str:
    """Validate an address for ``network`` and return its canonical form.

    Accepts P2PKH/P2SH (base58check), P2WPKH/P2WSH (bech32, witness v0) and P2TR (bech32m,
    witness v1, 32 bytes). Surrounding whitespace is ignored. The canonical form of a segwit
    address is all lower-case (BIP-173: an all-upper-case string is valid, mixed case is not);
    a base58 address is case-sensitive and returned as re-encoded from its bytes.

    Raises:
        InvalidAddress: malformed, bad checksum, mixed case, wrong witness version/encoding
            pair (v0 must be bech32, v1 bech32m), unsupported witness version or program
            length, or an address of another network (the message names it).
        ConfigError: ``network`` is not a known network name.
    """
    net = get_network(network)
    cleaned = _clean(text)
    if _looks_segwit(cleaned):
        version, program = _decode_segwit(cleaned, net)
        return _encode_segwit(net, version, program)
    prefix, hash160 = _decode_base58(cleaned, net)
    return str(base58.encode_check(bytes([prefix]) + hash160))


def _encode_segwit(net: Network, version: int, program: bytes) -> str:
    encoded = bech32.encode(net.bech32_hrp, version, program)
    if encoded is None:  # pragma: no cover - only reachable with an invalid program
        raise InvalidAddress(f"cannot encode witness v{version} program of {len(program)} bytes")
    return str(encoded)


def script_pubkey(address: str, network: str) -> bytes:
    """The scriptPubKey that ``address`` (of ``network``) stands for.

    * P2PKH: ``OP_DUP OP_HASH160 <20> OP_EQUALVERIFY OP_CHECKSIG`` (25 bytes);
    * P2SH: ``OP_HASH160 <20> OP_EQUAL`` (23 bytes, BIP-16);
    * P2WPKH / P2WSH: ``OP_0 <20>`` / ``OP_0 <32>`` (22 / 34 bytes, BIP-141);
    * P2TR: ``OP_1 <32>`` (34 bytes, BIP-341).

    Raises:
        InvalidAddress: as :func:`normalize_address`.
        ConfigError: unknown ``network``.
    """
    net = get_network(network)
    cleaned = _clean(address)
    if _looks_segwit(cleaned):
        version, program = _decode_segwit(cleaned, net)
        opcode = _OP_0 if version == 0 else _OP_1 + version - 1
        return bytes([opcode, len(program)]) + program
    prefix, hash160 = _decode_base58(cleaned, net)
    if prefix == net.pubkey_hash_prefix:
        return _P2PKH_HEAD + hash160 + _P2PKH_TAIL
    return _P2SH_HEAD + hash160 + _P2SH_TAIL


def address_of_script(script: bytes, network: str) -> str | None:
    """The canonical address of ``script`` on ``network``, or ``None`` if it has no standard
    address form we handle (bare multisig, OP_RETURN, future witness versions, ...).

    Recognises exactly the five templates of :func:`script_pubkey`; the result round-trips:
    ``script_pubkey(address_of_script(s, n), n) == s``.

    Raises:
        ConfigError: unknown ``network``.
    """
    net = get_network(network)
    data = bytes(script)
    if len(data) == 25 and data.startswith(_P2PKH_HEAD) and data.endswith(_P2PKH_TAIL):
        return str(base58.encode_check(bytes([net.pubkey_hash_prefix]) + data[3:23]))
    if len(data) == 23 and data.startswith(_P2SH_HEAD) and data.endswith(_P2SH_TAIL):
        return str(base58.encode_check(bytes([net.script_hash_prefix]) + data[2:22]))
    if len(data) in {22, 34} and data[0] == _OP_0 and data[1] == len(data) - 2:
        return _encode_segwit(net, 0, data[2:])
    if len(data) == 34 and data[0] == _OP_1 and data[1] == 32:
        return _encode_segwit(net, 1, data[2:])
    return None
