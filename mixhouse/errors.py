"""The exception hierarchy of Mixhouse.

One base class, :class:`MixhouseError`, with a narrow subclass per concern. The API maps
each class to an HTTP status in one place (``mixhouse.api.problems``); domain code never
raises bare ``Exception`` and never returns ``(ok, message)`` tuples.
"""

from __future__ import annotations


class MixhouseError(Exception):
    """Base class of every error Mixhouse raises on purpose."""


class ConfigError(MixhouseError):
    """The settings are inconsistent or unsafe (for example a default secret in production)."""


class InvalidInput(MixhouseError):
    """Input from a user or a peer was rejected before anything changed."""


class InvalidAddress(InvalidInput):
    """An address is malformed, has a bad checksum, or belongs to another network."""


class InvalidAmount(InvalidInput):
    """An amount is malformed, not positive, over-precise, below dust or above a limit."""


class NotFound(MixhouseError):
    """The named object (mix, deposit, address) does not exist."""


class IllegalTransition(MixhouseError):
    """A state change was asked for that the state machine does not allow, or another
    process changed the row first (the conditional UPDATE matched no row)."""


class InsufficientFunds(MixhouseError):
    """A ledger or chain refused a send because the sender's balance is too low."""


class PayoutsPaused(MixhouseError):
    """Reconciliation found a mismatch for this asset; no new payouts leave until it clears."""


class KeysExhausted(MixhouseError):
    """No deposit key is left to issue for an asset: its BIP-32 account used every soft index
    (``2**31`` of them); the operator must move the asset to a new account or seed."""


class KeysBusy(MixhouseError):
    """No deposit key could be issued right now: the key buffer was empty and the key holder
    (an HSM) did not make one within its deadline, or answered that it is locked or gone.
    Nothing was created; the client may retry after :attr:`retry_after_seconds`.

    Attributes:
        retry_after_seconds: whole seconds, ``>= 1`` (the API's ``Retry-After``).
    """

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = max(1, retry_after_seconds)


class ChainError(MixhouseError):
    """A chain node or ledger API failed or answered something we cannot use."""


class BroadcastRejected(ChainError):
    """The node or ledger definitely refused a send: it will not be mined as signed."""


class SendOutcomeUnknown(ChainError):
    """A send may or may not have reached the chain (timeout, dropped connection).

    Never retried blindly: the payout state machine reconciles it against the chain first.
    """


class RateLimited(MixhouseError):
    """A client asked for more than its share (mix creations per window); nothing changed.

    Attributes:
        retry_after_seconds: whole seconds after which the same request would be admitted
            (the ``Retry-After`` of the 429), at least 1.
    """

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = max(1, retry_after_seconds)


class OpenMixesCapped(RateLimited):
    """The service already has as many open mixes (awaiting a deposit) as it accepts."""


class AuditChainBroken(MixhouseError):
    """The hash chain of the audit log does not verify."""
