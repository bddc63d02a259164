"""The state machines of mixes, deposits and sends, as data.

A transition is one conditional UPDATE (``... WHERE id = :id AND state = :from``) that must
change exactly one row; :func:`transition` raises :class:`IllegalTransition` otherwise, so two
workers racing on the same row cannot both act.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import Row, Table
from sqlalchemy.ext.asyncio import AsyncConnection

from mixhouse.clock import now
from mixhouse.errors import IllegalTransition


class MixState(enum.StrEnum):
    """A mix: waiting for coins, mixing them, done, or expired without any deposit."""

    AWAITING_DEPOSIT = "awaiting_deposit"
    MIXING = "mixing"
    COMPLETED = "completed"
    EXPIRED = "expired"


class DepositState(enum.StrEnum):
    """A deposit: seen on chain, then frozen (sanctions), held (outside limits), or swept
    into the pool; ``dropped`` when a reorg removed it before it confirmed. A held deposit
    the operator refunds is ``refunding`` while its refund send is in flight, then
    ``refunded`` (mixer/refunds.py)."""

    SEEN = "seen"
    FROZEN = "frozen"
    HELD = "held"
    SWEEPING = "sweeping"
    POOLED = "pooled"
    DROPPED = "dropped"
    REFUNDING = "refunding"
    REFUNDED = "refunded"


class SendState(enum.StrEnum):
    """A send (a sweep, a payout or a refund): scheduled, signed and stored, broadcast, confirmed."""

    SCHEDULED = "scheduled"
    SIGNED = "signed"
    BROADCAST = "broadcast"
    CONFIRMED = "confirmed"


MIX_TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        (MixState.AWAITING_DEPOSIT, MixState.MIXING),
        (MixState.AWAITING_DEPOSIT, MixState.EXPIRED),
        (MixState.EXPIRED, MixState.MIXING),  # a late deposit inside the grace period
        (MixState.MIXING, MixState.COMPLETED),
        (MixState.COMPLETED, MixState.MIXING),  # another deposit to the same address
    }
)

DEPOSIT_TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        (DepositState.SEEN, DepositState.FROZEN),
        (DepositState.SEEN, DepositState.HELD),
        (DepositState.SEEN, DepositState.SWEEPING),
        (DepositState.SEEN, DepositState.DROPPED),
        (DepositState.DROPPED, DepositState.SEEN),  # the transfer reappeared after a reorg
        (DepositState.SWEEPING, DepositState.POOLED),
        # UTXO chains: an accepted deposit's output joins the pool at once, without a sweep.
        (DepositState.SEEN, DepositState.POOLED),
        # The operator refunds a held deposit (never a frozen one): scheduled, then confirmed.
        (DepositState.HELD, DepositState.REFUNDING),
        (DepositState.REFUNDING, DepositState.REFUNDED),
    }
)

SEND_TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        (SendState.SCHEDULED, SendState.SIGNED),
        (SendState.SIGNED, SendState.BROADCAST),
        # A transaction the mempool dropped is rebroadcast from its stored bytes.
        (SendState.BROADCAST, SendState.SIGNED),
        (SendState.BROADCAST, SendState.CONFIRMED),
        # Found on chain by the recovery check before its broadcast was recorded.
        (SendState.SIGNED, SendState.CONFIRMED),
        # UTXO chains only: the node proved an input spent by another transaction and this one
        # absent, so it can never confirm; it is signed again from other coins.
        (SendState.SIGNED, SendState.SCHEDULED),
        (SendState.BROADCAST, SendState.SCHEDULED),
    }
)

_TABLE_TRANSITIONS = {"mixes": MIX_TRANSITIONS, "deposits": DEPOSIT_TRANSITIONS, "sends": SEND_TRANSITIONS}


async def transition(
    conn: AsyncConnection, table: Table, row_id: Any, from_state: str, to_state: str, **values: Any
) -> Row[Any]:
    """Move one row of ``table`` from ``from_state`` to ``to_state`` and set ``values``.

    Returns:
        The updated row.

    Raises:
        IllegalTransition: the pair is not an allowed transition, or the row is not (or no
            longer) in ``from_state``.
    """
    if (from_state, to_state) not in _TABLE_TRANSITIONS[table.name]:
        raise IllegalTransition(f"{table.name}: {from_state} -> {to_state} is not allowed")
    values.setdefault("updated_at", now())
    result = await conn.execute(
        table.update()
        .where(table.c.id == row_id, table.c.state == from_state)
        .values(state=to_state, **values)
        .returning(*table.c)
    )
    row = result.first()
    if row is None:
        raise IllegalTransition(f"{table.name} {row_id} is not in state {from_state!r}")
    return row


__all__ = [
    "DEPOSIT_TRANSITIONS",
    "MIX_TRANSITIONS",
    "SEND_TRANSITIONS",
    "DepositState",
    "MixState",
    "SendState",
    "now",
    "transition",
]
