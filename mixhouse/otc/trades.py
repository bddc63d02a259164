"""The trade state machine: each fill is a trade, on both nodes, moved only along
:data:`TRANSITIONS` (issue 10 adds the swap states: ``locked`` by each side, ``claimed``,
``completed``, ``refunded``).

A trade starts ``agreed`` when the maker's owner grants the fill (maker side) or when the
taker's node records the signed grant (taker side). The acknowledgement flags of
``otc_trades`` (``peer_confirmed``: the other side's confirmation arrived; ``confirm_acked``:
ours was acknowledged) are independent of the state.
"""

from __future__ import annotations

import enum

from mixhouse.errors import IllegalTransition


class TradeState(enum.StrEnum):
    """States of a trade, stored by name."""

    AGREED = "agreed"


TRANSITIONS: dict[TradeState, frozenset[TradeState]] = {
    TradeState.AGREED: frozenset(),
}


def check_transition(current: TradeState, new: TradeState) -> None:
    """Raises:
    IllegalTransition: ``current -> new`` is not in :data:`TRANSITIONS`.
    """
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"a trade cannot go from {current} to {new}")
