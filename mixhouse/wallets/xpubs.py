"""Watch-only Bitcoin key sets: parse an extended public key or an output descriptor, derive addresses.

What a user may send (surrounding whitespace ignored):

* an extended public key alone, its script type given by its SLIP-132 version bytes:

  ====================  ==========================  ============================
  mainnet / test nets   script type                 usual account path
  ====================  ==========================  ============================
  ``xpub`` / ``tpub``   ``pkh`` (P2PKH)             BIP-44 ``m/44'/c'/a'``
  ``ypub`` / ``upub``   ``sh-wpkh`` (P2SH-P2WPKH)   BIP-49 ``m/49'/c'/a'``
  ``zpub`` / ``vpub``   ``wpkh`` (P2WPKH)           BIP-84 ``m/84'/c'/a'``
  ====================  ==========================  ============================

* an output descriptor (BIP-380) of one key: ``pkh(KEY)`` (BIP-381), ``sh(wpkh(KEY))`` and
  ``wpkh(KEY)`` (BIP-382), ``tr(KEY)`` (BIP-386, key path only: BIP-86 addresses). ``KEY`` is a
  plain ``xpub``/``tpub`` (descriptors do not take SLIP-132 versions) with an optional key
  origin ``[fingerprint/84'/0'/0']``, followed by ``/0/*``, ``/1/*``, the BIP-389 multipath
  ``/<0;1>/*``, or nothing. An optional ``#checksum`` (8 characters, BIP-380) is verified.

Either way the result is the whole account: the receive chain ``KEY/0/*`` (branch 0) and the
change chain ``KEY/1/*`` (branch 1). A descriptor of one chain (``/0/*`` or ``/1/*``, the form
Bitcoin Core's ``listdescriptors`` gives) names the same account as its sibling, so both import
the same key set: the canonical form is always
``<type>([origin]<xpub|tpub>/<0;1>/*)#<checksum>`` with ``h`` for hardened origin steps.

Refused (:class:`~mixhouse.errors.InvalidInput`, nothing echoed back that could be a secret):
private keys of any kind (``xprv``/``tprv``/``zprv``..., WIF) anywhere in the input; hardened
steps after the key (BIP-32: a public key derives only unhardened children); a key of another
network than the server's; multisig (``multi``, ``sortedmulti``, ``Ypub``/``Zpub``...),
taproot script trees and every other descriptor type; malformed input and bad checksums.

Derivation is embit's BIP-32 (``embit.bip32.HDKey.child``); scripts are embit's templates and
addresses are encoded by :func:`mixhouse.chains.bitcoin.networks.address_of_script` for the
server's network (so regtest gets ``bcrt1`` addresses).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from embit import base58, bip32, script  # type: ignore[import-untyped]
from embit.base import EmbitError  # type: ignore[import-untyped]
from embit.descriptor.checksum import checksum as _embit_checksum  # type: ignore[import-untyped]

from mixhouse.chains.bitcoin import networks
from mixhouse.errors import InvalidInput

ScriptType = Literal["pkh", "sh-wpkh", "wpkh", "tr"]
SCRIPT_TYPES: Final[tuple[ScriptType, ...]] = ("pkh", "sh-wpkh", "wpkh", "tr")

RECEIVE: Final = 0
CHANGE: Final = 1
BRANCHES: Final = (RECEIVE, CHANGE)
HARDENED: Final = 2**31
MAX_INPUT = 2000

WATCH_ONLY: Final = "watch-only: send the extended public key, never a private key"
SUPPORTED: Final = (
    "supported: an xpub/ypub/zpub (tpub/upub/vpub) alone, or one of the descriptors pkh(KEY), "
    "sh(wpkh(KEY)), wpkh(KEY), tr(KEY) with one extended public key KEY"
)

# BIP-32 serialisation (78 bytes): version 4, depth 1, parent fingerprint 4, child number 4,
# chain code 32, key data 33 (0x00 + 32-byte secret for a private key).
_EXTENDED_KEY_BYTES = 78
_KEY_DATA_OFFSET = 45

# Public version bytes (BIP-32, SLIP-132): name, mainnet?, script type (None: multisig).
_PUBLIC_VERSIONS: Final[dict[bytes, tuple[str, bool, ScriptType | None]]] = {
    bytes.fromhex("0488b21e"): ("xpub", True, "pkh"),
    bytes.fromhex("049d7cb2"): ("ypub", True, "sh-wpkh"),
    bytes.fromhex("04b24746"): ("zpub", True, "wpkh"),
    bytes.fromhex("0295b43f"): ("Ypub", True, None),
    bytes.fromhex("02aa7ed3"): ("Zpub", True, None),
    bytes.fromhex("043587cf"): ("tpub", False, "pkh"),
    bytes.fromhex("044a5262"): ("upub", False, "sh-wpkh"),
    bytes.fromhex("045f1cf6"): ("vpub", False, "wpkh"),
    bytes.fromhex("024289ef"): ("Upub", False, None),
    bytes.fromhex("02575483"): ("Vpub", False, None),
}
_PLAIN_VERSION: Final = {True: bytes.fromhex("0488b21e"), False: bytes.fromhex("043587cf")}
# WIF (private key) version bytes: mainnet 0x80, every test network 0xef.
_WIF_PREFIXES: Final = (0x80, 0xEF)

# Base58 runs long enough to be a WIF (51-52 characters) or an extended key (111).
_BASE58_RUN = re.compile(r"[1-9A-HJ-NP-Za-km-z]{50,}")
_KEY_EXPRESSION = re.compile(r"(?:\[(?P<origin>[^\[\]]*)\])?(?P<key>[^/\[\]]+)(?P<path>(?:/[^/]*)*)")
_ORIGIN = re.compile(r"(?P<fingerprint>[0-9a-fA-F]{8})(?P<steps>(?:/[0-9]+[hH']?)*)")
_HEX_PUBKEY = re.compile(r"0[23][0-9a-fA-F]{64}|04[0-9a-fA-F]{128}|[0-9a-fA-F]{64}")
_FUNCTION_NAME = re.compile(r"[a-z_]{1,16}")
_CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"

# (opening, closing, script type), the nested form first.
_WRAPPERS: Final[tuple[tuple[str, str, ScriptType], ...]] = (
    ("sh(wpkh(", "))", "sh-wpkh"),
    ("wpkh(", ")", "wpkh"),
    ("pkh(", ")", "pkh"),
    ("tr(", ")", "tr"),
)
# Paths after the key that name the account's two chains (BIP-44 change level, BIP-389).
_ACCOUNT_PATHS: Final = ((), ("0", "*"), ("1", "*"), ("<0;1>", "*"))


@dataclass(frozen=True, slots=True)
class WatchOnlyKey:
    """A parsed watch-only key set: one extended public key and a script type.

    Attributes:
        script_type: ``pkh``, ``sh-wpkh``, ``wpkh`` or ``tr``.
        network: the canonical network name the addresses are encoded for.
        xpub: the key in plain BIP-32 form (``xpub...`` on mainnet, ``tpub...`` elsewhere).
        origin: the key origin without brackets (``"d34db33f/84h/0h/0h"``), ``None`` if not given.
        descriptor: the canonical descriptor with its BIP-380 checksum,
            e.g. ``wpkh([d34db33f/84h/0h/0h]xpub.../<0;1>/*)#abcdefgh``.
        key: the embit ``HDKey`` (public) that addresses are derived from.
    """

    script_type: ScriptType
    network: str
    xpub: str
    origin: str | None
    descriptor: str
    key: Any = field(repr=False, compare=False)

    @property
    def identity(self) -> tuple[ScriptType, str]:
        """``(script_type, xpub)``: what decides the addresses. Two descriptors that differ only
        in their key origin (or in which chain they named) have the same identity."""
        return (self.script_type, self.xpub)


def descriptor_checksum(body: str) -> str:
    """The 8-character BIP-380 checksum of a descriptor without its ``#`` part.

    Computed by embit (``embit.descriptor.checksum``, the algorithm of BIP-380 and Bitcoin
    Core's ``DescriptorChecksum``).

    Raises:
        InvalidInput: ``body`` has a character outside the descriptor character set.
    """
    try:
        return str(_embit_checksum(body))
    except EmbitError:
        raise InvalidInput("the descriptor has a character outside the BIP-380 character set") from None


def _refuse_private_keys(text: str) -> None:
    """Raise if any base58 run of ``text`` is (or plainly tries to be) a private key."""
    for run in _BASE58_RUN.findall(text):
        if run[1:4] == "prv":  # xprv, tprv, yprv, zprv, uprv, vprv, Yprv... even mistyped
            raise InvalidInput(f"the input holds an extended private key; {WATCH_ONLY}")
        try:
            raw = bytes(base58.decode_check(run))
        except (ValueError, IndexError):
            continue
        if len(raw) == _EXTENDED_KEY_BYTES and raw[_KEY_DATA_OFFSET] == 0:
            raise InvalidInput(f"the input holds an extended private key; {WATCH_ONLY}")
        wif = len(raw) == 33 or (len(raw) == 34 and raw[-1] == 1)
        if wif and raw[0] in _WIF_PREFIXES:
            raise InvalidInput(f"the input holds a private key (WIF); {WATCH_ONLY}")


def _split_checksum(text: str) -> str:
    """The descriptor without its ``#checksum``, after verifying the checksum if there is one."""
    body, sep, given = text.partition("#")
    if not sep:
        descriptor_checksum(body)  # only to refuse characters outside the set
        return body
    if "#" in given:
        raise InvalidInput("a descriptor has at most one '#' (before its 8-character checksum)")
    if len(given) != 8 or any(c not in _CHECKSUM_CHARSET for c in given):
        raise InvalidInput("a descriptor checksum is 8 characters of the bech32 alphabet after '#' (BIP-380)")
    if descriptor_checksum(body) != given:
        # The expected checksum is not shown: "fixing" it would hide the typo it caught.
        raise InvalidInput("the descriptor checksum does not match: it was mistyped or altered (BIP-380)")
    return body


def _unwrap(body: str) -> tuple[ScriptType | None, str]:
    """``(script type, key expression)`` of a descriptor; ``(None, body)`` for a bare key."""
    if "(" not in body and ")" not in body:
        return None, body
    for opening, closing, script_type in _WRAPPERS:
        if body.startswith(opening) and body.endswith(closing):
            inner = body[len(opening) : -len(closing)]
            if script_type == "tr" and "," in inner:
                raise InvalidInput(f"taproot script trees (tr(KEY,TREE)) are not supported; {SUPPORTED}")
            if any(c in inner for c in "(),{}"):
                break
            return script_type, inner
    if "multi" in body:
        raise InvalidInput(f"multisig descriptors are not supported; {SUPPORTED}")
    name = body.split("(", 1)[0]
    if name in {"pkh", "wpkh", "tr"}:
        raise InvalidInput(f"malformed {name}(...) descriptor: it takes exactly one key; {SUPPORTED}")
    if _FUNCTION_NAME.fullmatch(name):
        raise InvalidInput(f"unsupported descriptor {name}(...); {SUPPORTED}")
    raise InvalidInput(f"malformed descriptor; {SUPPORTED}")


def _origin(text: str) -> str:
    """A key origin normalised: lower-case fingerprint, ``h`` for hardened steps."""
    match = _ORIGIN.fullmatch(text)
    if match is None:
        raise InvalidInput(
            "malformed key origin: expected [fingerprint/path], 8 hexadecimal digits then steps like /84h/0h/0h"
        )
    parts = [match["fingerprint"].lower()]
    for step in match["steps"].split("/")[1:]:
        hardened = step[-1] in "hH'"
        number = int(step.rstrip("hH'"))
        if number >= HARDENED:
            raise InvalidInput(f"key origin step {number} is out of range (below 2^31)")
        parts.append(f"{number}h" if hardened else str(number))
    return "/".join(parts)


def _check_path(path: str) -> None:
    """Accept the steps after the key only if they name the account's receive/change chains."""
    steps = tuple(path.split("/")[1:]) if path else ()
    if any(step and step[-1] in "hH'" for step in steps):
        raise InvalidInput(
            "hardened derivation after the key cannot be done from a public key (BIP-32); "
            "send the extended public key of the account (e.g. m/84'/0'/0') followed by /0/*, /1/* or /<0;1>/*"
        )
    if steps not in _ACCOUNT_PATHS:
        raise InvalidInput(
            "unsupported derivation after the key: use /0/* (receive), /1/* (change), /<0;1>/* (both, BIP-389) "
            "or nothing; both chains are imported in every case"
        )


def _decode_key(text: str, *, in_descriptor: bool, network: networks.Network) -> tuple[Any, ScriptType, bool]:
    """``(public HDKey, script type of its SLIP-132 version, mainnet?)`` of a base58 key."""
    if _HEX_PUBKEY.fullmatch(text):
        raise InvalidInput(f"a single public key has one address: import that address instead; {SUPPORTED}")
    try:
        raw = bytes(base58.decode_check(text))
    except (ValueError, IndexError):
        raise InvalidInput("the key is not a valid base58check extended public key (mistyped?)") from None
    if len(raw) != _EXTENDED_KEY_BYTES:
        raise InvalidInput(f"the key is not an extended public key (78 bytes); {SUPPORTED}")
    if raw[_KEY_DATA_OFFSET] == 0:
        raise InvalidInput(f"the input holds an extended private key; {WATCH_ONLY}")
    known = _PUBLIC_VERSIONS.get(raw[:4])
    if known is None:
        raise InvalidInput("the key is not a Bitcoin extended public key (xpub, ypub, zpub, tpub, upub or vpub)")
    name, mainnet, script_type = known
    if script_type is None:
        raise InvalidInput(f"{name} keys are multisig (P2WSH) keys, which are not supported; {SUPPORTED}")
    if mainnet != (network.name == "mainnet"):
        want = "xpub, ypub or zpub" if network.name == "mainnet" else "tpub, upub or vpub"
        kind = "a mainnet" if mainnet else "a testnet/signet/regtest"
        raise InvalidInput(f"{name} is {kind} key, but this server runs {network.name}: send a {want}")
    if in_descriptor and name not in {"xpub", "tpub"}:
        raise InvalidInput(
            f"inside a descriptor the key must be a plain xpub/tpub (BIP-380), not a {name}; "
            f"send the {name} alone, without the descriptor around it"
        )
    try:
        key = bip32.HDKey.parse(raw)
    except (EmbitError, ValueError):
        raise InvalidInput("the extended public key is invalid (its public key is not a curve point)") from None
    return key, script_type, mainnet


def parse_watch_only(text: str, *, network: str) -> WatchOnlyKey:
    """Parse an extended public key or a one-key output descriptor (see the module docstring).

    Args:
        text: what the user sent.
        network: the server's Bitcoin network (``mainnet``, ``testnet``, ``signet``,
            ``regtest``); a key of another network is refused.

    Returns:
        The :class:`WatchOnlyKey`, with the canonical descriptor.

    Raises:
        InvalidInput: a private key anywhere in ``text``, a bad checksum, a malformed or
            unsupported descriptor, hardened steps after the key, a key of another network.
            Messages never repeat the input.
        ConfigError: ``network`` is unknown.
    """
    net = networks.get_network(network)
    cleaned = text.strip()
    if not cleaned:
        raise InvalidInput(f"the key is empty; {SUPPORTED}")
    if len(cleaned) > MAX_INPUT:
        raise InvalidInput(f"the input is {len(cleaned)} characters; a one-key descriptor is far shorter")
    # First, so that a private key is named as such whatever else is wrong with the input.
    _refuse_private_keys(cleaned)
    body = _split_checksum(cleaned)
    wrapped_type, expression = _unwrap(body)
    match = _KEY_EXPRESSION.fullmatch(expression)
    if match is None:
        raise InvalidInput(f"malformed key expression; {SUPPORTED}")
    origin = None if match["origin"] is None else _origin(match["origin"])
    _check_path(match["path"])
    key, version_type, mainnet = _decode_key(match["key"], in_descriptor=wrapped_type is not None, network=net)
    script_type = wrapped_type or version_type
    xpub = str(key.to_base58(version=_PLAIN_VERSION[mainnet]))
    expression = ("" if origin is None else f"[{origin}]") + xpub + "/<0;1>/*"
    canonical = {
        "pkh": f"pkh({expression})",
        "sh-wpkh": f"sh(wpkh({expression}))",
        "wpkh": f"wpkh({expression})",
        "tr": f"tr({expression})",
    }[script_type]
    return WatchOnlyKey(
        script_type=script_type,
        network=net.name,
        xpub=xpub,
        origin=origin,
        descriptor=f"{canonical}#{descriptor_checksum(canonical)}",
        key=bip32.HDKey.parse(bytes(base58.decode_check(xpub))),
    )


def _script_pubkey(script_type: ScriptType, child: Any) -> bytes:
    """The scriptPubKey of one derived key: P2PKH (BIP-44), P2SH-P2WPKH (BIP-49), P2WPKH
    (BIP-84), or P2TR with the BIP-86 tweak (no script tree)."""
    if script_type == "pkh":
        return bytes(script.p2pkh(child).data)
    if script_type == "sh-wpkh":
        return bytes(script.p2sh(script.p2wpkh(child)).data)
    if script_type == "wpkh":
        return bytes(script.p2wpkh(child).data)
    return bytes(script.p2tr(child).data)


def derive_addresses(key: WatchOnlyKey, branch: int, start: int, stop: int) -> list[str]:
    """The addresses ``KEY/branch/i`` for ``i`` in ``[start, stop)`` (BIP-32 unhardened
    derivation; BIP-44 change level: branch 0 receive, 1 change).

    Returns:
        Canonical addresses of ``key.network``, in index order.

    Raises:
        ValueError: ``branch`` not 0 or 1, or ``0 <= start <= stop <= 2**31`` does not hold.
    """
    if isinstance(branch, bool) or branch not in BRANCHES:
        raise ValueError(f"branch must be 0 (receive) or 1 (change), got {branch!r}")
    if not 0 <= start <= stop <= HARDENED:
        raise ValueError(f"indexes must satisfy 0 <= start <= stop <= 2**31, got [{start}, {stop})")
    chain = key.key.child(branch)  # once per call: each address is then one child step
    addresses = []
    for index in range(start, stop):
        address = networks.address_of_script(_script_pubkey(key.script_type, chain.child(index)), key.network)
        assert address is not None  # the four templates all have an address form
        addresses.append(address)
    return addresses


def derive_address(key: WatchOnlyKey, branch: int, index: int) -> str:
    """The address ``KEY/branch/index`` (see :func:`derive_addresses`).

    Raises:
        ValueError: ``branch`` not 0 or 1, or ``index`` outside ``[0, 2**31)``.
    """
    return derive_addresses(key, branch, index, index + 1)[0]
