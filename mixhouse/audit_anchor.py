"""Signed checkpoints of the audit chain, kept outside the database.

The hash chain (``mixhouse.audit``) proves that no sealed entry was altered *relative to the
chain in the database*. Someone who can write the database can still delete the newest entries
and move the head back, or rewrite the whole log and recompute every hash. Both are caught by
comparing the chain with what was known earlier, somewhere the database writer cannot reach:

* :func:`make_checkpoint` seals, reads the chain head ``(seq, hash)`` and signs it (ECDSA over
  secp256k1, SHA-256 of the canonical JSON, via coincurve/libsecp256k1; low-S DER signatures);
* :func:`write_checkpoint` writes it as ``checkpoint-<seq>.json`` into a directory the operator
  ships elsewhere (an append-only bucket, another host, a printout); the worker does it every
  ``audit_checkpoint_interval_seconds`` when ``audit_checkpoint_dir`` is set;
* :func:`verify_checkpoints` (``mixhouse audit verify --checkpoints DIR``) checks each
  checkpoint's signature against the operator's public key, then that the database still holds
  an entry at that position with exactly that hash. A truncated log ends before the position; a
  rewritten one has another hash there.

The signing key is ``MIXHOUSE_AUDIT_CHECKPOINT_KEY`` (32 bytes, hex; ``mixhouse audit keygen``
makes one); only its public key is needed to verify.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import coincurve
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from mixhouse.audit import GENESIS_HASH, seal
from mixhouse.db.tables import audit_chain_head, audit_log
from mixhouse.errors import AuditChainBroken, InvalidInput

FORMAT = "mixhouse-audit-checkpoint/1"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement "the audit chain had ``seq`` entries, the last hashing to ``hash``".

    Attributes:
        seq: chain position of the head (0: an empty chain).
        hash: the head's hash, 32 bytes (``GENESIS_HASH`` for an empty chain).
        at: when the checkpoint was taken (UTC).
        public_key: the signer's compressed secp256k1 public key, 33 bytes.
        signature: DER ECDSA signature over :meth:`message`'s SHA-256.
    """

    seq: int
    hash: bytes
    at: datetime
    public_key: bytes
    signature: bytes

    def message(self) -> bytes:
        """The signed bytes: canonical JSON of format, seq, hash and time."""
        return _message(self.seq, self.hash, self.at)

    def to_json(self) -> str:
        """The file form (hex for bytes, ISO 8601 for the time)."""
        return json.dumps(
            {
                "format": FORMAT,
                "seq": self.seq,
                "hash": self.hash.hex(),
                "at": self.at.isoformat(),
                "public_key": self.public_key.hex(),
                "signature": self.signature.hex(),
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        """Parse the file form.

        Raises:
            InvalidInput: not a checkpoint of this format.
        """
        try:
            body = json.loads(text)
            if body.get("format") != FORMAT:
                raise InvalidInput(f"not a {FORMAT} file")
            return cls(
                seq=int(body["seq"]),
                hash=bytes.fromhex(body["hash"]),
                at=datetime.fromisoformat(body["at"]),
                public_key=bytes.fromhex(body["public_key"]),
                signature=bytes.fromhex(body["signature"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidInput(f"malformed audit checkpoint: {exc}") from exc

    def signed_by(self, public_key: bytes) -> bool:
        """Whether the signature verifies under ``public_key`` (33 or 65 bytes)."""
        if public_key != self.public_key and coincurve.PublicKey(public_key).format() != self.public_key:
            return False
        try:
            return bool(coincurve.PublicKey(self.public_key).verify(self.signature, self.message()))
        except (ValueError, TypeError):
            return False


def _message(seq: int, digest: bytes, at: datetime) -> bytes:
    body = {"format": FORMAT, "seq": seq, "hash": digest.hex(), "at": at.isoformat()}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def signing_key(secret_hex: str) -> coincurve.PrivateKey:
    """The checkpoint signing key from its 64-hex-digit secret.

    Raises:
        InvalidInput: not 32 bytes of hex, or not a valid secp256k1 scalar.
    """
    try:
        secret = bytes.fromhex(secret_hex.strip())
    except ValueError as exc:
        raise InvalidInput("the audit checkpoint key must be 32 bytes of hex") from exc
    if len(secret) != 32:
        raise InvalidInput("the audit checkpoint key must be 32 bytes of hex")
    try:
        return coincurve.PrivateKey(secret)
    except ValueError as exc:
        raise InvalidInput("the audit checkpoint key is not a valid secp256k1 secret") from exc


def new_signing_key() -> coincurve.PrivateKey:
    """A fresh random signing key (``os.urandom`` through coincurve)."""
    return coincurve.PrivateKey()


async def make_checkpoint(conn: AsyncConnection, key: coincurve.PrivateKey) -> Checkpoint:
    """Seal what can be sealed, then sign the chain head. ``conn`` must be outside a
    transaction (each seal batch commits)."""
    await seal(conn)
    head = (await conn.execute(select(audit_chain_head.c.seq, audit_chain_head.c.hash))).one()
    await conn.commit()
    at = datetime.now(UTC)
    seq, digest = int(head.seq), bytes(head.hash)
    # coincurve hashes the message with SHA-256 and produces a low-S signature (BIP-62 form).
    signature = key.sign(_message(seq, digest, at))
    return Checkpoint(seq=seq, hash=digest, at=at, public_key=key.public_key.format(), signature=signature)


def write_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` as ``checkpoint-<seq>.json`` in ``directory`` (made if missing),
    atomically (a temporary file renamed into place). An existing file of the same position is
    kept: the first statement about a position is the one that counts."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"checkpoint-{checkpoint.seq:012d}.json"
    if path.exists():
        return path
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(checkpoint.to_json() + "\n")
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    tmp.rename(path)
    return path


def load_checkpoints(directory: Path) -> list[Checkpoint]:
    """Every ``checkpoint-*.json`` of ``directory``, by position.

    Raises:
        InvalidInput: a file that is not a checkpoint, or no such directory.
    """
    if not directory.is_dir():
        raise InvalidInput(f"no checkpoint directory {directory}")
    return sorted(
        (Checkpoint.from_json(p.read_text()) for p in directory.glob("checkpoint-*.json")), key=lambda c: c.seq
    )


@dataclass(frozen=True, slots=True)
class AnchorReport:
    """Checkpoints checked, and the newest position they vouch for."""

    checked: int
    newest_seq: int


async def verify_checkpoints(conn: AsyncConnection, checkpoints: list[Checkpoint], public_key: bytes) -> AnchorReport:
    """Check the database's audit chain against signed checkpoints.

    Run it with :func:`mixhouse.audit.verify_chain` (which checks the chain is internally
    consistent); this checks it is the chain the checkpoints saw.

    Raises:
        AuditChainBroken: a checkpoint's signature does not verify under ``public_key``; the
            chain ends before a checkpoint's position (entries deleted); or the entry at a
            checkpoint's position has another hash (the log was rewritten).
    """
    head = (await conn.execute(select(audit_chain_head.c.seq))).scalar_one()
    for cp in checkpoints:
        if not cp.signed_by(public_key):
            raise AuditChainBroken(f"audit checkpoint at position {cp.seq}: signature does not verify")
        if cp.seq == 0:
            if cp.hash != GENESIS_HASH:
                raise AuditChainBroken("audit checkpoint at position 0 does not carry the genesis hash")
            continue
        if int(head) < cp.seq:
            raise AuditChainBroken(
                f"audit log truncated: checkpoint of {cp.at.isoformat()} saw position {cp.seq}, "
                f"the chain now ends at {head}"
            )
        stored = (await conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == cp.seq))).scalar_one_or_none()
        if stored is None or bytes(stored) != cp.hash:
            raise AuditChainBroken(
                f"audit log rewritten: the entry at position {cp.seq} does not hash as it did at {cp.at.isoformat()}"
            )
    return AnchorReport(checked=len(checkpoints), newest_seq=max((c.seq for c in checkpoints), default=0))


def fingerprint(public_key: bytes) -> str:
    """A short printable id of a public key (first 8 bytes of its SHA-256, hex)."""
    return hashlib.sha256(public_key).hexdigest()[:16]
