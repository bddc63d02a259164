"""Key-use audit: every signature a signer makes, recorded for the audit log (issue 12).

:class:`AuditedSigner` wraps any :class:`~mixhouse.keys.signer.Signer` and notes each
``sign_digest`` as a :class:`KeyUse` - the key's reference (BIP-32 path, which is also its
token label), its role, its public id and the signer kind; never the key, the digest or the
signature. The uses are collected by whoever is about to store what was signed:

.. code-block:: python

    with recording_key_uses() as uses:
        prepared = await adapter.prepare_send(...)  # signs through an AuditedSigner
    ...
    for entry in key_use_entries(uses, entity_type="send", entity_id=str(row.id), purpose=row.kind,
                                 asset=row.asset):
        work.audit(entry)  # in the same transaction as the signed send, so both or neither

The collector is a :class:`contextvars.ContextVar`: it follows the awaits of one task (and
``asyncio.to_thread``, which copies the context), never another task's signatures. A signature
made while no collector is open is still counted (:attr:`AuditedSigner.unrecorded`) and
logged (the key reference only), so a signing path that does not record shows up.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import structlog
from embit import hashes  # type: ignore[import-untyped]

from mixhouse.audit import AuditEntry
from mixhouse.keys.signer import Signer, SignerError, SignerHealth

_ROLES = (
    (re.compile(r"m/44'/60'/0'/0/\d+"), "evm-deposit"),
    (re.compile(r"m/44'/60'/1'/0/\d+"), "evm-pool"),
    (re.compile(r"m/84'/\d+'/0'/0/\d+"), "btc-deposit"),
    # Any account: pool generation g is account g's change chain (key rotation, keys/bip84).
    (re.compile(r"m/84'/\d+'/\d+'/1/\d+"), "btc-pool"),
)


def key_role(key_ref: str) -> str:
    """The role of a key from its reference (BIP-32 path): ``"evm-deposit"``
    (``m/44'/60'/0'/0/i``), ``"evm-pool"`` (``m/44'/60'/1'/0/j``), ``"btc-deposit"`` (BIP-84
    receive chain), ``"btc-pool"`` (BIP-84 change chain of any account: pool and change coins of every pool
    generation), else ``"other"``."""
    for pattern, role in _ROLES:
        if pattern.fullmatch(key_ref):
            return role
    return "other"


@dataclass(frozen=True, slots=True)
class KeyUse:
    """One signature, as the audit log keeps it.

    Attributes:
        key_ref: the key's reference (its BIP-32 path; in a token, its label without prefix).
        role: :func:`key_role` of it.
        key_id: HASH160 of the key's compressed public key, hex (the P2WPKH program of a
            Bitcoin key; public, and the same whichever signer holds the key).
        signer: the signer's kind (``"software"``, ``"pkcs11"``).
    """

    key_ref: str
    role: str
    key_id: str
    signer: str


log = structlog.get_logger(__name__)

_collector: ContextVar[list[KeyUse] | None] = ContextVar("mixhouse_key_uses", default=None)


@contextmanager
def recording_key_uses() -> Iterator[list[KeyUse]]:
    """Collect the signatures made by :class:`AuditedSigner` s in this context (this task and
    the threads it hands work to) into the yielded list, in order. Nested collectors each see
    only their own block's signatures."""
    uses: list[KeyUse] = []
    token = _collector.set(uses)
    try:
        yield uses
    finally:
        _collector.reset(token)


def key_use_entries(
    uses: list[KeyUse],
    *,
    entity_type: str,
    entity_id: str,
    purpose: str,
    asset: str | None = None,
    actor: str = "worker",
) -> list[AuditEntry]:
    """One ``key.used`` audit entry per distinct key in ``uses`` (a key that signed several
    inputs of one transaction is one entry with its count).

    Args:
        entity_type, entity_id: what was signed (``"send"`` and its id; a UTXO batch's id).
        purpose: why (the send's kind: ``"payout"``, ``"sweep"``, ``"refund"``...).

    Returns:
        Entries whose details are ``{"key_ref", "role", "key_id", "signer", "purpose",
        "signatures"}``: no key material.
    """
    counts: dict[KeyUse, int] = {}
    for use in uses:
        counts[use] = counts.get(use, 0) + 1
    return [
        AuditEntry(
            "key.used",
            entity_type,
            entity_id,
            actor=actor,
            asset=asset,
            details={
                "key_ref": use.key_ref,
                "role": use.role,
                "key_id": use.key_id,
                "signer": use.signer,
                "purpose": purpose,
                "signatures": count,
            },
        )
        for use, count in counts.items()
    ]


class AuditedSigner:
    """A :class:`~mixhouse.keys.signer.Signer` that notes every signature of ``inner``.

    Args:
        inner: the signer that holds the keys.

    Attributes:
        kind: ``inner.kind``.
        inner: the wrapped signer.
        signatures: signatures made so far (by this process, through this wrapper).
        unrecorded: those made while no :func:`recording_key_uses` collector was open.
    """

    __slots__ = ("_count_lock", "inner", "kind", "signatures", "unrecorded")

    def __init__(self, inner: Signer) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.signatures = 0
        self.unrecorded = 0
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<AuditedSigner of {self.inner!r}>"

    def public_key(self, key_ref: str) -> bytes:
        """``inner.public_key(key_ref)``: not a use of the private key, not recorded."""
        return self.inner.public_key(key_ref)

    def sign_digest(self, key_ref: str, digest: bytes, *, low_r: bool = False) -> tuple[int, int]:
        """``inner.sign_digest``, then the use noted in the open collector (only once the
        signature exists: a failed attempt signed nothing).

        Raises:
            SignerError, ValueError: as ``inner``.
        """
        signature = self.inner.sign_digest(key_ref, digest, low_r=low_r)
        use = KeyUse(
            key_ref=key_ref,
            role=key_role(key_ref),
            key_id=bytes(hashes.hash160(self.inner.public_key(key_ref))).hex(),
            signer=self.kind,
        )
        collector = _collector.get()
        with self._count_lock:
            self.signatures += 1
            if collector is None:
                self.unrecorded += 1
        if collector is not None:
            collector.append(use)
        else:
            log.debug("signature outside a key-use collector", key_ref=key_ref, role=use.role)
        return signature

    def health(self, timeout: float = 5.0) -> SignerHealth:
        """``inner.health(timeout)`` where the inner signer has one, else ``ok`` unchecked."""
        return inner_health(self.inner, timeout)


def inner_health(inner: Signer, timeout: float) -> SignerHealth:
    """The health of the signer a wrapper holds: ``inner.health(timeout)`` where it has one
    (a PKCS#11 token does), else ``ok`` unchecked (a software signer has nothing to reach)."""
    check = getattr(inner, "health", None)
    if check is None:
        return SignerHealth(inner.kind, True, True, True, None, None)
    result: SignerHealth = check(timeout)
    return result


class KeyRetired(SignerError):
    """A signature was asked of a retired pool key (mixhouse.mixer.pool_rotation)."""


class RetiredKeyGuard:
    """A :class:`~mixhouse.keys.signer.Signer` that refuses to sign with a retired key.

    Args:
        inner: the signer holding the keys (an ``AuditedSigner`` goes inside or outside: a
            refused signature is never made, so never audited).
        retired: key references refused (:func:`mixhouse.mixer.pool_rotation.retired_key_refs`); :meth:`set_retired`
            replaces them when a generation retires. A reference ending in ``/`` is a prefix:
            every key under it is refused (a Bitcoin pool generation is a whole BIP-32 chain,
            ``m/84'/c'/g'/1/``, its keys unbounded; :func:`mixhouse.keys.bip84.generation_key_prefix`).
    """

    __slots__ = ("_prefixes", "_retired", "inner", "kind")

    def __init__(self, inner: Signer, retired: frozenset[str] = frozenset()) -> None:
        self.inner = inner
        self.kind = inner.kind
        self._retired: frozenset[str] = frozenset()
        self._prefixes: tuple[str, ...] = ()
        self.set_retired(retired)

    def __repr__(self) -> str:
        return f"<RetiredKeyGuard of {self.inner!r}, {len(self._retired)} retired>"

    def set_retired(self, retired: frozenset[str]) -> None:
        """Refuse exactly ``retired`` from now on (a reference ending in ``/``: every key under it)."""
        self._retired = retired
        self._prefixes = tuple(sorted(ref for ref in retired if ref.endswith("/")))

    def public_key(self, key_ref: str) -> bytes:
        """``inner.public_key``: a public key is no use of the private key (a retired
        generation's address is still read to check it is empty)."""
        return self.inner.public_key(key_ref)

    def sign_digest(self, key_ref: str, digest: bytes, *, low_r: bool = False) -> tuple[int, int]:
        """``inner.sign_digest`` unless ``key_ref`` is retired.

        Raises:
            KeyRetired: ``key_ref`` belongs to a retired generation.
            SignerError, ValueError: as ``inner``.
        """
        if key_ref in self._retired or key_ref.startswith(self._prefixes):
            raise KeyRetired(f"key {key_ref} is retired")
        return self.inner.sign_digest(key_ref, digest, low_r=low_r)

    def health(self, timeout: float = 5.0) -> SignerHealth:
        """``inner.health(timeout)`` where it has one, else ``ok`` unchecked."""
        return inner_health(self.inner, timeout)


def unwrap(signer: Signer) -> Signer:
    """The signer under any :class:`AuditedSigner` or :class:`RetiredKeyGuard` wrapping (tests
    and tools that need the token's own methods)."""
    while isinstance(signer, AuditedSigner | RetiredKeyGuard):
        signer = signer.inner
    return signer
