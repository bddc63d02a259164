"""Signers: the only code that uses private keys (issue 8 part 3, issue 12).

An adapter names a key by a *key reference* (``key_ref``, a string) and asks a :class:`Signer`
for its public key and for ECDSA signatures over digests it computed itself (the EIP-1559
signing hash, a BIP-143 sighash). It never sees a private key, so the same adapter code runs
on keys derived in process (:class:`SoftwareSigner`) and on keys that never leave a hardware
token (:class:`mixhouse.keys.pkcs11.Pkcs11Signer`).

Key references are BIP-32 paths (``"m/44'/60'/0'/0/7"``, ``"m/84'/1'/0'/1/3"``) whatever the
signer: the software signer derives the key at that path from its seed; a PKCS#11 signer uses
the path as the token label of a key generated inside the token (no derivation). So a key's
role (deposit, pool, change) and index read the same in both.

Signatures are secp256k1 ECDSA ``(r, s)`` with low S (``s <= n/2``: BIP-62 / BIP-146 for
Bitcoin, EIP-2 for Ethereum): every signer normalises, so callers never see a high S.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import coincurve
from embit.util import secp256k1 as embit_secp  # type: ignore[import-untyped]

from mixhouse.errors import ChainError

if TYPE_CHECKING:
    from mixhouse.keys.bip84 import Bip84Keyring
    from mixhouse.keys.hd import HdKeyring

# The order of the secp256k1 group (SEC 2, section 2.4.1).
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_N = SECP256K1_N // 2
# "Low R": the DER encoding is at most this long (r and s 32 bytes each at most, in practice
# r < 2**255: a higher r needs a 33rd byte, a leading zero), as Bitcoin Core and embit grind.
LOW_R_MAX_DER_BYTES = 70
# Low-R grinding gives up after this many tries (each has a 1/2 chance; 2**-64 to fail).
MAX_LOW_R_TRIES = 64


class SignerError(ChainError):
    """A signer could not sign or find a key: the token is locked, gone or slow, a key is
    missing, or it answered something that is not a valid signature. A :class:`ChainError`,
    so a send that meets it is retried, never marked failed."""


# The digest a health check signs (any fixed 32 bytes: the signature is checked, then dropped).
HEALTH_DIGEST = hashlib.sha256(b"mixhouse signer health check").digest()


@dataclass(frozen=True, slots=True)
class SignerHealth:
    """What a signer's health check found (``GET /metrics``: ``mixhouse_signer_*``).

    Attributes:
        kind: the signer's kind (``"software"``, ``"pkcs11"``).
        ok: a test signature was made and verified.
        present: the key holder was found (a PKCS#11 token in its slot; always for software).
        logged_in: a session is logged in (the PIN was accepted; always for software).
        sign_seconds: how long the test signature took, seconds (``None`` if none was made).
        error: why not ``ok``: a short reason (an exception's class name, "busy"), never a secret.
    """

    kind: str
    ok: bool
    present: bool
    logged_in: bool
    sign_seconds: float | None = None
    error: str | None = None


class Signer(Protocol):
    """What an adapter needs of a key holder.

    Attributes:
        kind: ``"software"`` or ``"pkcs11"`` (for logs and the audit trail, never a secret).
    """

    kind: str

    def public_key(self, key_ref: str) -> bytes:
        """The 33-byte compressed (SEC 1) secp256k1 public key of ``key_ref``.

        Raises:
            SignerError: no such key and the signer cannot create it, or the token failed.
            ValueError: ``key_ref`` is not a reference this signer understands.
        """
        ...

    def sign_digest(self, key_ref: str, digest: bytes, *, low_r: bool = False) -> tuple[int, int]:
        """ECDSA-sign the 32-byte ``digest`` (already hashed: it is signed as is) with ``key_ref``.

        Args:
            low_r: also keep the DER encoding at most :data:`LOW_R_MAX_DER_BYTES` long (in
                practice ``r < 2**255``, one byte shorter; what Bitcoin Core's wallet does
                since 0.17): by RFC 6979 extra entropy for a deterministic signer, by signing
                again for a token with random nonces. See :func:`is_low_r`.

        Returns:
            ``(r, s)`` as ints with ``0 < r < n`` and ``0 < s <= n/2`` (low S).

        Raises:
            SignerError: as :meth:`public_key`, or the signature does not verify.
            ValueError: ``digest`` is not 32 bytes.
        """
        ...


def low_s(r: int, s: int) -> tuple[int, int]:
    """``(r, s)`` with ``s`` replaced by ``n - s`` when it is above ``n/2`` (BIP-62, EIP-2):
    the same signature for verifiers, and the only form Bitcoin relays and Ethereum accepts."""
    return (r, SECP256K1_N - s) if s > HALF_N else (r, s)


def is_low_r(r: int, s: int) -> bool:
    """Whether the DER encoding of ``(r, s)`` is at most :data:`LOW_R_MAX_DER_BYTES` long, the
    test of Bitcoin Core's and embit's low-R grinding."""
    return len(der_signature(r, s)) <= LOW_R_MAX_DER_BYTES


def check_digest(digest: bytes) -> bytes:
    """``digest`` as bytes if it is 32 bytes long.

    Raises:
        ValueError: another length.
    """
    if len(digest) != 32:
        raise ValueError(f"a digest to sign is 32 bytes, got {len(digest)}")
    return bytes(digest)


def verify(public_key: bytes, digest: bytes, r: int, s: int) -> bool:
    """Whether ``(r, s)`` is a valid low-S ECDSA signature of ``digest`` by ``public_key``
    (libsecp256k1 through coincurve, which rejects high S)."""
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        return False
    der = der_signature(r, s)
    try:
        return bool(coincurve.PublicKey(public_key).verify(der, digest, hasher=None))
    except (ValueError, TypeError):
        return False


def recovery_id(public_key: bytes, digest: bytes, r: int, s: int) -> int:
    """The recovery id (Ethereum's ``y_parity``, 0 or 1) of ``(r, s)`` over ``digest``.

    Found by trying both: the one whose recovered key is ``public_key``. Ids 2 and 3
    (``r >= n - p``) have a chance of about 2**-128 and are not tried.

    Raises:
        SignerError: neither id recovers ``public_key`` (the signature is not the key's).
    """
    compact = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    for candidate in (0, 1):
        try:
            recovered = coincurve.PublicKey.from_signature_and_message(
                compact + bytes([candidate]), digest, hasher=None
            )
        except ValueError:
            continue
        if recovered.format(compressed=True) == public_key:
            return candidate
    raise SignerError("the signature does not recover the key's public key")


def der_signature(r: int, s: int) -> bytes:
    """The strict DER encoding (BIP-66) of ``(r, s)``: ``30 len 02 len(r) r 02 len(s) s``
    with minimal big-endian integers (a leading zero byte where the top bit is set)."""

    def integer(value: int) -> bytes:
        body = value.to_bytes((value.bit_length() + 8) // 8, "big")  # +8: room for a sign bit
        return b"\x02" + bytes([len(body)]) + body

    payload = integer(r) + integer(s)
    return b"\x30" + bytes([len(payload)]) + payload


def compressed_public_key(secret: bytes) -> bytes:
    """The 33-byte compressed public key of a 32-byte secp256k1 private key."""
    return bytes(coincurve.PrivateKey(secret).public_key.format(compressed=True))


def uncompressed_public_key(public_key: bytes) -> bytes:
    """The 65-byte uncompressed (``04 || x || y``) form of a compressed public key.

    Raises:
        ValueError: ``public_key`` is not a point of secp256k1.
    """
    return bytes(coincurve.PublicKey(public_key).format(compressed=False))


class SoftwareSigner:
    """Signs in process with keys derived from a seed (the BIP-39/BIP-32 keyrings).

    Args:
        secret_of: the 32-byte private key of a key reference (raises ``ValueError`` for a
            reference it does not know); see the constructors :meth:`for_evm`,
            :meth:`for_bip84` and :meth:`from_keys`.

    Signing is RFC 6979 deterministic (libsecp256k1 through embit): the same key and digest
    always give the same signature, so a retried send is the same transaction; with
    ``low_r`` it grinds the RFC 6979 extra data with a counter exactly as embit's
    ``PrivateKey.sign`` and Bitcoin Core do. ``repr`` shows no key.
    """

    __slots__ = ("_public", "_secret_of", "kind")

    def __init__(self, secret_of: Callable[[str], bytes]) -> None:
        self.kind = "software"
        self._secret_of = secret_of
        self._public: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"<SoftwareSigner with {len(self._public)} public keys cached>"

    @classmethod
    def for_evm(cls, keyring: HdKeyring) -> SoftwareSigner:
        """Keys of an Ethereum :class:`~mixhouse.keys.hd.HdKeyring`; a key reference is any
        BIP-32 path (``"m/44'/60'/0'/0/7"``)."""
        return cls(keyring.private_key)

    @classmethod
    def for_bip84(cls, keyring: Bip84Keyring) -> SoftwareSigner:
        """Keys of a :class:`~mixhouse.keys.bip84.Bip84Keyring`; a key reference is the path
        ``keyring.path(change, index)`` (``"m/84'/1'/0'/0/7"``), or of any account
        (``"m/84'/1'/2'/1/7"``: pool generation 2, key rotation)."""
        return cls(keyring.private_key_at)

    @classmethod
    def from_keys(cls, keys: Mapping[str, bytes]) -> SoftwareSigner:
        """Fixed ``{key reference: private key}`` (tests, demos, one-off tools)."""
        table = dict(keys)

        def secret_of(key_ref: str) -> bytes:
            try:
                return table[key_ref]
            except KeyError:
                raise ValueError(f"no key {key_ref!r}") from None

        return cls(secret_of)

    def health(self, timeout: float = 5.0) -> SignerHealth:  # noqa: ARG002 - in process: nothing waits
        """A test signature with a throwaway key (not one of the keyring's): always ``ok``
        unless libsecp256k1 itself fails; see :class:`SignerHealth`."""
        probe = hashlib.sha256(b"mixhouse software signer health probe").digest()
        started = time.perf_counter()
        r, s = low_s(*_compact(embit_secp.ecdsa_sign(HEALTH_DIGEST, probe)))
        took = time.perf_counter() - started
        ok = verify(compressed_public_key(probe), HEALTH_DIGEST, r, s)
        return SignerHealth(self.kind, ok, True, True, took, None if ok else "the test signature did not verify")

    def public_key(self, key_ref: str) -> bytes:
        """See :meth:`Signer.public_key`; cached per reference.

        Raises:
            ValueError: the keyring does not know ``key_ref``.
        """
        public = self._public.get(key_ref)
        if public is None:
            public = compressed_public_key(self._secret_of(key_ref))
            self._public[key_ref] = public
        return public

    def sign_digest(self, key_ref: str, digest: bytes, *, low_r: bool = False) -> tuple[int, int]:
        """See :meth:`Signer.sign_digest`.

        Raises:
            ValueError: ``digest`` is not 32 bytes or the keyring does not know ``key_ref``.
            SignerError: no low-R signature after :data:`MAX_LOW_R_TRIES` tries.
        """
        digest = check_digest(digest)
        secret = self._secret_of(key_ref)
        # libsecp256k1 signs with low S already; low_s() keeps that a checked promise.
        r, s = low_s(*_compact(embit_secp.ecdsa_sign(digest, secret)))
        counter = 1
        while low_r and not is_low_r(r, s):
            if counter > MAX_LOW_R_TRIES:
                raise SignerError("no low-R signature found")
            # Bitcoin Core's grinding: RFC 6979 extra data = the counter, 32 bytes little-endian.
            extra = counter.to_bytes(32, "little")
            r, s = low_s(*_compact(embit_secp.ecdsa_sign(digest, secret, None, extra)))
            counter += 1
        return r, s


def _compact(signature: object) -> tuple[int, int]:
    compact = bytes(embit_secp.ecdsa_signature_serialize_compact(signature))
    return int.from_bytes(compact[:32], "big"), int.from_bytes(compact[32:], "big")
