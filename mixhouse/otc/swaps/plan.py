"""Roles, timeouts and the checks of an atomic swap, as pure functions (issue 10, part 3).

The initiator creates the secret, locks first with the longer timeout T1, and claims the
participant's lock (publishing the secret) only while that lock still has
``claim_margin_seconds`` to run. The participant locks second, with T2 < T1, only after the
initiator's lock is confirmed and checked; it claims with the secret while the initiator's
lock still has ``claim_margin_seconds`` to run. So ``T1 - T2`` must leave room to see the
secret, get the claim confirmed and bump its fee: :func:`check_settings` asks
``T1 - T2 >= min_gap_seconds >= 2 * claim_margin_seconds``.

Timeouts are on each chain's own clock: a block height on Bitcoin (converted with a nominal
``btc_block_seconds``, mainnet 600 s; blocks can come faster, so heights are counted on the
short side) and a unix time (``block.timestamp``) on Ethereum. The EVM contract refuses a
claim from its expiry on, while the Bitcoin script still takes a claim after its lock height
(until someone refunds): the margins here apply to both, so neither side relies on that.

Defaults (mainnet scale): T1 = 24 h, T2 = 12 h, gap >= 6 h, claim margin 2 h, 3 Bitcoin
confirmations and 12 Ethereum ones. Who initiates: the side that pays Bitcoin (a Bitcoin
lock is slower to confirm and cannot be claimed early by a contract bug on the other side).
"""

from __future__ import annotations

from dataclasses import dataclass

from mixhouse.errors import ConfigError, InvalidInput

BTC = "btc"
EVM = "evm"
CHAINS = (BTC, EVM)


@dataclass(frozen=True, slots=True)
class SwapSettings:
    """The swap engine's settings (seconds unless named otherwise).

    Attributes:
        t1_seconds: the initiator's lock timeout from when it locks.
        t2_seconds: the participant's lock timeout from when it locks (< T1).
        min_gap_seconds: the least time the initiator's lock must still have over the
            participant's when the participant locks.
        claim_margin_seconds: a side claims only while the lock it claims has at least this
            long to run (else it does not claim, and refunds at its own timeout).
        lock_by_seconds: how long a participant waits for the initiator's confirmed lock
            before abandoning the swap (it has locked nothing yet).
        btc_block_seconds: the nominal Bitcoin block interval used to turn seconds into
            heights (600 on mainnet).
        btc_confirmations: k on Bitcoin before a lock counts (and a claim is final).
        evm_confirmations: k on Ethereum.
        message_retry_seconds: wait between two deliveries of an unacknowledged message.
    """

    t1_seconds: int = 24 * 3600
    t2_seconds: int = 12 * 3600
    min_gap_seconds: int = 6 * 3600
    claim_margin_seconds: int = 2 * 3600
    lock_by_seconds: int = 3600
    btc_block_seconds: int = 600
    btc_confirmations: int = 3
    evm_confirmations: int = 12
    message_retry_seconds: float = 5.0

    def confirmations(self, chain: str) -> int:
        """k on ``chain`` (``"btc"`` or ``"evm"``)."""
        return self.btc_confirmations if chain == BTC else self.evm_confirmations


def check_settings(settings: SwapSettings) -> None:
    """Refuse settings under which an honest side could lose its coins.

    Raises:
        ConfigError: ``T2 >= T1``, a gap ``T1 - T2`` below ``min_gap_seconds``, a gap below
            twice the claim margin, a T2 not above the claim margin, or k below 1.
    """
    s = settings
    if s.t2_seconds >= s.t1_seconds:
        raise ConfigError(f"T2 ({s.t2_seconds} s) must be below T1 ({s.t1_seconds} s)")
    if s.t1_seconds - s.t2_seconds < s.min_gap_seconds:
        raise ConfigError(f"T1 - T2 = {s.t1_seconds - s.t2_seconds} s is below the minimum gap {s.min_gap_seconds} s")
    if s.min_gap_seconds < 2 * s.claim_margin_seconds:
        raise ConfigError("the minimum gap must be at least twice the claim margin")
    if s.t2_seconds <= s.claim_margin_seconds:
        raise ConfigError("T2 must be above the claim margin")
    if s.btc_confirmations < 1 or s.evm_confirmations < 1:
        raise ConfigError("confirmations must be at least 1")


def other_chain(chain: str) -> str:
    """The chain of the other leg.

    Raises:
        InvalidInput: not ``"btc"`` or ``"evm"``.
    """
    if chain not in CHAINS:
        raise InvalidInput(f"unknown chain {chain!r}")
    return EVM if chain == BTC else BTC


def initiator_chain(*, initiator_pays: str) -> str:
    """The chain the initiator locks on: the one it pays on (``"btc"`` or ``"evm"``)."""
    other_chain(initiator_pays)
    return initiator_pays


def lock_chain(role: str, initiator_locks_on: str) -> str:
    """The chain ``role`` locks on."""
    return initiator_locks_on if role == "initiator" else other_chain(initiator_locks_on)


def heights_for(seconds: int, block_seconds: int) -> int:
    """Blocks that stand for ``seconds`` at ``block_seconds`` a block, rounded down, at least 1."""
    return max(1, seconds // block_seconds)


def seconds_for_blocks(blocks: int, block_seconds: int) -> int:
    """The nominal seconds of ``blocks`` blocks (negative when the height is past)."""
    return blocks * block_seconds


def participant_may_lock(
    settings: SwapSettings, *, initiator_left_seconds: int, initiator_confirmations: int, initiator_chain_: str
) -> str | None:
    """Whether the participant may lock now, against the initiator's checked lock.

    Args:
        initiator_left_seconds: what the initiator's lock has left before its timeout.
        initiator_confirmations: its depth on its chain.

    Returns:
        ``None`` if it may; else why not (``"unconfirmed"``: wait; ``"short_timeout"``: never).
    """
    if initiator_confirmations < settings.confirmations(initiator_chain_):
        return "unconfirmed"
    if initiator_left_seconds < settings.t2_seconds + settings.min_gap_seconds:
        return "short_timeout"
    return None


def initiator_timeout_too_long(settings: SwapSettings, *, initiator_left_seconds: int) -> bool:
    """True if the initiator's lock runs much longer than T1 (griefing: the participant's
    coins would wait for nothing while the initiator keeps a free option); one T2 of slack."""
    return initiator_left_seconds > settings.t1_seconds + settings.t2_seconds


def may_claim(settings: SwapSettings, *, other_left_seconds: int, other_confirmations: int, chain: str) -> str | None:
    """Whether a side may claim the other's lock now (the initiator's claim reveals the secret).

    Returns:
        ``None`` if it may; ``"unconfirmed"`` (wait) or ``"too_late"`` (never: less than the
        claim margin is left before the other side may refund).
    """
    if other_left_seconds < settings.claim_margin_seconds:
        return "too_late"
    if other_confirmations < settings.confirmations(chain):
        return "unconfirmed"
    return None


def participant_timeout_ok(
    settings: SwapSettings, *, participant_left_seconds: int, initiator_left_seconds: int
) -> bool:
    """True if the participant's lock ends at least the gap before the initiator's (the
    initiator checks this before it reveals the secret) and is not already past the margin."""
    return (
        initiator_left_seconds - participant_left_seconds >= settings.min_gap_seconds // 2
        and participant_left_seconds >= settings.claim_margin_seconds
    )
