"""The swap state machine as data: every state of each role and the moves between them.

The initiator (who made the secret) goes::

    offering -> agreed -> lock_signed -> locked -> lock_confirmed -> claim_signed -> claimed -> completed

and the participant::

    awaiting_offer -> offered -> lock_signed -> locked -> lock_confirmed -> secret_known
        -> claim_signed -> claimed -> completed

Either side that has locked and cannot go on (the other side vanished, its lock is wrong,
or it is too late to claim safely) waits for its own timeout and refunds on its own:
``refund_wait -> refund_signed -> refunding -> refunded``. A participant that never locked
ends ``abandoned``; one that learned the secret too late ends ``too_late`` (its coins were
claimed and the initiator's lock is gone or past claiming: the documented loss of a node that
was offline past the margin). On Bitcoin the participant still claims late, since the secret is
public already and the script takes a claim after the lock height until someone refunds: it
ends ``too_late`` only if the initiator's refund won that race.

``*_signed`` states hold a signed, stored, not yet broadcast transaction: a restart broadcasts
it again (the same bytes, so the same txid). An Ethereum transaction the node refuses there
(its nonce was taken meanwhile) is signed again in place (``*_signed -> *_signed``): the
refused one can never be mined.
"""

from __future__ import annotations

from mixhouse.errors import IllegalTransition

INITIATOR = "initiator"
PARTICIPANT = "participant"

REFUND_PATH = {
    "refund_wait": frozenset({"refund_signed"}),
    "refund_signed": frozenset({"refunding", "refund_signed"}),
    "refunding": frozenset({"refunded", "refund_signed"}),
}

TRANSITIONS: dict[str, dict[str, frozenset[str]]] = {
    INITIATOR: {
        "offering": frozenset({"agreed", "abandoned"}),
        "agreed": frozenset({"lock_signed", "abandoned"}),
        "lock_signed": frozenset({"locked", "lock_signed"}),
        "locked": frozenset({"lock_confirmed", "refund_wait", "lock_signed"}),
        "lock_confirmed": frozenset({"claim_signed", "refund_wait"}),
        "claim_signed": frozenset({"claimed", "claim_signed"}),
        "claimed": frozenset({"completed", "claim_signed", "refund_wait"}),
        **REFUND_PATH,
    },
    PARTICIPANT: {
        "awaiting_offer": frozenset({"offered", "abandoned"}),
        "offered": frozenset({"lock_signed", "abandoned"}),
        "lock_signed": frozenset({"locked", "lock_signed"}),
        "locked": frozenset({"lock_confirmed", "refund_wait", "lock_signed"}),
        "lock_confirmed": frozenset({"secret_known", "refund_wait"}),
        "secret_known": frozenset({"claim_signed", "too_late"}),
        "claim_signed": frozenset({"claimed", "claim_signed", "too_late"}),
        "claimed": frozenset({"completed", "claim_signed"}),
        **REFUND_PATH,
    },
}

TERMINAL = frozenset({"completed", "refunded", "abandoned", "too_late"})
# States in which this side's coins are locked on chain (or about to be).
HOLDS_COINS = frozenset({"lock_signed", "locked", "lock_confirmed", "secret_known", "refund_wait"})


def initial_state(role: str) -> str:
    """The first state of ``role`` (``"initiator"`` or ``"participant"``).

    Raises:
        IllegalTransition: unknown role.
    """
    if role == INITIATOR:
        return "offering"
    if role == PARTICIPANT:
        return "awaiting_offer"
    raise IllegalTransition(f"unknown swap role {role!r}")


def check_transition(role: str, current: str, new: str) -> None:
    """Raise unless ``current -> new`` is a move of ``role``'s machine.

    Raises:
        IllegalTransition: not a move of the machine (or an unknown role or state).
    """
    allowed = TRANSITIONS.get(role, {}).get(current, frozenset())
    if new not in allowed:
        raise IllegalTransition(f"swap {role}: {current} -> {new} is not a move of the state machine")
