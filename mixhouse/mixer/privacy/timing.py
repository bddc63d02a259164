"""Timing attacks: which deposits a withdrawal address's payouts could follow in time.

The documented delay window says a payout is sent between ``delay_min_seconds`` and
``max_wait_seconds`` after its deposit (plus up to one round when payouts are released in
shared rounds). An address whose payouts fall outside a deposit's window cannot belong to it.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mixhouse.mixer.privacy.records import AddressRecord, PublicDeposit

# Float seconds are compared with this tolerance: payout times are deposit time plus a delay,
# and the two additions on either side of a comparison may round differently.
TIME_EPSILON = 1e-6


@dataclass(frozen=True, slots=True)
class TimingRules:
    """The documented timing of payouts, as the attacker knows it.

    Attributes:
        delay_min_seconds: the earliest a payout follows its deposit, seconds.
        max_wait_seconds: the latest a payout follows its deposit, seconds.
        max_addresses: the most withdrawal addresses a mix may have (10 in production).
        round_seconds: when payouts are released on round boundaries (a payout due at ``t``
            leaves at the next multiple of it), the extra slack a payout may take; ``None``
            when payouts leave when due.
        gate_k: the release gate's ``k`` (``privacy_gate_k``; 1: no gate).
    """

    delay_min_seconds: float
    max_wait_seconds: float
    max_addresses: int = 10
    round_seconds: float | None = None
    gate_k: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.delay_min_seconds <= self.max_wait_seconds:
            raise ValueError("the delay window is empty")
        if self.max_addresses < 1:
            raise ValueError("a mix has at least one withdrawal address")
        if self.round_seconds is not None and self.round_seconds <= 0:
            raise ValueError("a round lasts a positive number of seconds")

    @property
    def slack_seconds(self) -> float:
        """How much later than ``max_wait_seconds`` a payout may leave (one round)."""
        return self.round_seconds or 0.0

    def window(self, deposit_at: float) -> tuple[float, float]:
        """The times a payout of a deposit made at ``deposit_at`` may have, inclusive."""
        return (
            deposit_at + self.delay_min_seconds - TIME_EPSILON,
            deposit_at + self.max_wait_seconds + self.slack_seconds + TIME_EPSILON,
        )


def fits_window(deposit_at: float, first_at: float, last_at: float, timing: TimingRules) -> bool:
    """Whether payouts spanning ``[first_at, last_at]`` can all follow a deposit at ``deposit_at``."""
    start, end = timing.window(deposit_at)
    return start <= first_at and last_at <= end


def time_compatible(deposit: PublicDeposit, record: AddressRecord, timing: TimingRules) -> bool:
    """Whether every payout to the address lies in the deposit's window."""
    return fits_window(deposit.at, record.first_at, record.last_at, timing)


class DepositTimeline:
    """Deposits sorted by time, to find the deposits an address's payouts fit in O(log n).

    A deposit at ``t`` fits payouts in ``[first, last]`` iff
    ``last - max_wait - slack <= t <= first - delay_min``: a contiguous range of the timeline.
    """

    def __init__(self, deposits: Sequence[PublicDeposit]) -> None:
        self.deposits: tuple[PublicDeposit, ...] = tuple(sorted(deposits, key=lambda d: d.at))
        self._times = [d.at for d in self.deposits]

    def compatible(self, record: AddressRecord, timing: TimingRules) -> tuple[PublicDeposit, ...]:
        """The deposits ``record`` is time-compatible with, oldest first."""
        low = record.last_at - timing.max_wait_seconds - timing.slack_seconds - TIME_EPSILON
        high = record.first_at - timing.delay_min_seconds + TIME_EPSILON
        start = bisect.bisect_left(self._times, low)
        end = bisect.bisect_right(self._times, high)
        return self.deposits[start:end]


def window_candidates(
    deposits: Sequence[PublicDeposit], records: Mapping[str, AddressRecord], timing: TimingRules
) -> dict[str, frozenset[str]]:
    """The window attack: address -> refs of the deposits its payouts fit in time."""
    timeline = DepositTimeline(deposits)
    return {
        address: frozenset(d.ref for d in timeline.compatible(record, timing)) for address, record in records.items()
    }


def fifo_links(
    deposits: Sequence[PublicDeposit], records: Mapping[str, AddressRecord], timing: TimingRules
) -> dict[str, str | None]:
    """The FIFO attack: addresses in order of first payout, each linked to the earliest deposit
    that fits it in time and is not linked yet (else the earliest that fits at all).

    Returns:
        address -> the linked deposit ref, or ``None`` when no deposit fits.
    """
    timeline = DepositTimeline(deposits)
    taken: set[str] = set()
    links: dict[str, str | None] = {}
    for address, record in sorted(records.items(), key=lambda item: (item[1].first_at, item[0])):
        fitting = timeline.compatible(record, timing)
        free = [d for d in fitting if d.ref not in taken]
        chosen = free[0] if free else (fitting[0] if fitting else None)
        if chosen is not None:
            taken.add(chosen.ref)
        links[address] = chosen.ref if chosen is not None else None
    return links
