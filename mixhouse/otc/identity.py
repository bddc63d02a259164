"""The node's identity: one secp256k1 key, kept on disk, that signs every order it owns.

Signatures are BIP-340 Schnorr (libsecp256k1 through coincurve) over BIP-340 tagged hashes;
a node's id is its 32-byte x-only public key in lowercase hex (64 characters). The key file
holds the 32-byte secret in hex, mode 0600, created on the first run and never logged.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import NewType

from coincurve import PrivateKey, PublicKeyXOnly

from mixhouse.errors import InvalidInput, MixhouseError

NodeId = NewType("NodeId", str)


class KeyFileError(MixhouseError):
    """The node key file exists but is unreadable, malformed or readable by others."""


class BadSignature(InvalidInput):
    """A signature does not verify under the claimed owner's key (or is malformed)."""


def tagged_hash(tag: str, message: bytes) -> bytes:
    """BIP-340's ``SHA256(SHA256(tag) || SHA256(tag) || message)``: 32 bytes, domain-separated
    so a signature for one kind of message never verifies as another."""
    tag_digest = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(tag_digest + tag_digest + message).digest()


class NodeKey:
    """The node's signing key.

    Attributes:
        node_id: the x-only public key, hex (the owner field of the node's orders).
    """

    def __init__(self, secret: bytes) -> None:
        self._key = PrivateKey(secret)
        self.node_id = NodeId(self._key.public_key_xonly.format().hex())

    @classmethod
    def generate(cls) -> NodeKey:
        """A fresh random key (``secrets``)."""
        return cls(PrivateKey(secrets.token_bytes(32)).secret)

    @classmethod
    def load_or_create(cls, path: Path) -> NodeKey:
        """The key stored at ``path``; created (mode 0600, parents 0700) if missing.

        Raises:
            KeyFileError: the file is malformed or group/other can read it.
        """
        path = path.expanduser()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = cls.generate()
            # O_EXCL: two processes starting at once must not both write a key.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return cls.load_or_create(path)
            with os.fdopen(fd, "w") as handle:
                handle.write(key._key.secret.hex() + "\n")
            return key
        if path.stat().st_mode & 0o077:
            raise KeyFileError(f"{path} is readable by group or others; chmod 600 it")
        text = path.read_text().strip()
        try:
            secret = bytes.fromhex(text)
        except ValueError as exc:
            raise KeyFileError(f"{path} does not hold a hex secret key") from exc
        if len(secret) != 32:
            raise KeyFileError(f"{path} does not hold a 32-byte secret key")
        return cls(secret)

    def sign(self, digest: bytes) -> str:
        """A BIP-340 signature (64 bytes, hex) of the 32-byte ``digest``."""
        return self._key.sign_schnorr(digest, secrets.token_bytes(32)).hex()

    def __repr__(self) -> str:  # never the secret
        return f"NodeKey({self.node_id})"


def verify(node_id: str, digest: bytes, signature_hex: str) -> None:
    """Check a BIP-340 signature of ``digest`` by ``node_id``.

    Raises:
        BadSignature: malformed key or signature, or it does not verify.
    """
    try:
        key = PublicKeyXOnly(bytes.fromhex(node_id))
        ok = key.verify(bytes.fromhex(signature_hex), digest)
    except ValueError as exc:
        raise BadSignature("malformed key or signature") from exc
    if not ok:
        raise BadSignature("the signature does not verify under the owner's key")
