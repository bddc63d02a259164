"""What the two legs of a hash-time-locked swap share, whatever the chain (issue 10).

An atomic swap locks coins on two chains under one hash ``H = sha256(secret)``: whoever claims
one lock publishes the secret, which then claims the other. Both legs
(:mod:`mixhouse.chains.bitcoin.htlc`, :mod:`mixhouse.chains.evm.htlc`) use SHA-256 (Bitcoin
has ``OP_SHA256``; the EVM has the ``sha256`` precompile) and a secret of exactly
:data:`SECRET_BYTES` bytes: a secret of another size that one chain accepts and the other
refuses would let its holder claim one side and leave the other side unclaimable (the
"secret size" attack that decred/atomicswap's ``OP_SIZE 32 OP_EQUALVERIFY`` prevents).
"""

from __future__ import annotations

import hashlib
import secrets

from mixhouse.errors import InvalidInput

SECRET_BYTES = 32


class HtlcMismatch(InvalidInput):
    """A lock on chain (a Bitcoin HTLC output, an EVM HTLC swap) is not the one agreed on: wrong
    hash, recipient, refund key, amount, token or timeout, or not an HTLC of ours at all. The
    honest side does not lock second (nor claim) against it.

    Attributes:
        field: the first term that differs (``"hash"``, ``"amount"``, ``"lock_height"``, ...).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def new_secret() -> bytes:
    """A fresh swap secret: :data:`SECRET_BYTES` bytes from the OS's CSPRNG (``secrets``)."""
    return secrets.token_bytes(SECRET_BYTES)


def secret_hash(secret: bytes) -> bytes:
    """``sha256(secret)``, the 32-byte hash lock of both legs.

    Raises:
        InvalidInput: ``secret`` is not exactly :data:`SECRET_BYTES` bytes.
    """
    if len(secret) != SECRET_BYTES:
        raise InvalidInput(f"a swap secret is {SECRET_BYTES} bytes, got {len(secret)}")
    return hashlib.sha256(secret).digest()


def check_hash(value: bytes, what: str = "hash") -> bytes:
    """``value`` as bytes if it is a 32-byte hash.

    Raises:
        InvalidInput: another length.
    """
    if len(value) != 32:
        raise InvalidInput(f"{what} must be 32 bytes, got {len(value)}")
    return bytes(value)
