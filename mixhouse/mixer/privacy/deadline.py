"""The deadline attack: payouts that leave exactly when a deposit's maximum wait runs out.

The maximum wait is documented (a mix's ``delay_max`` plus ``privacy_max_extra_wait_seconds``,
shown at creation). A gate that holds a thin deposit *until* that moment releases it at a
time an attacker can compute from the deposit alone: ``arrival + max_wait``, give or take a
round. Every address whose payouts start in that band of some deposit points at it, whatever
the amounts - a FIFO attack with a known delay. With most deposits of a busy hour still below
``k`` at the maximum wait (issue 13's realistic population: 143 of 200), that is most links.

The gate (``mixer/gate.py``) therefore does not wait for the documented maximum itself: each
deposit's fallback moment is drawn uniformly inside its window, in secret. This attack is kept
to show what a deterministic deadline gives away (and that the drawn one does not):

* ``timing+deadline``: an address's candidates are the deposits whose deadline band contains
  its first payout; if none does, every deposit its payouts fit in time.
* ``single+deadline``: the same, among the ``single`` attack's candidates (deposits that could
  pay the address's total alone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mixhouse.mixer.privacy.records import AddressRecord, PublicDeposit
from mixhouse.mixer.privacy.rules import FeeRules
from mixhouse.mixer.privacy.timing import DepositTimeline, TimingRules

# A deadline release is made at the deposit's latest release moment, ``arrival + max_wait -
# margin`` with ``margin = 2 rounds + max_wait / 20`` (``mixer.pooling.latest_release``, public
# source), and its pieces leave at that round or the next; busy workers start rounds late.
_ROUNDS_BEFORE = 1.0
_ROUNDS_AFTER = 2.0
# Without rounds (payouts sent when due), seconds either side.
_SECONDS_WITHOUT_ROUNDS = 5.0


def deadline_of(deposit_at: float, timing: TimingRules) -> float:
    """When a gate that waits for the maximum wait itself releases a deposit made at
    ``deposit_at``, seconds (see ``mixer.pooling.latest_release``)."""
    margin = 2 * (timing.round_seconds or 0.0) + timing.max_wait_seconds / 20
    return deposit_at + max(0.0, timing.max_wait_seconds - margin)


def _in_band(deposit: PublicDeposit, first_at: float, timing: TimingRules) -> bool:
    deadline = deadline_of(deposit.at, timing)
    if timing.round_seconds is None:
        before = after = _SECONDS_WITHOUT_ROUNDS
    else:
        before, after = _ROUNDS_BEFORE * timing.round_seconds, _ROUNDS_AFTER * timing.round_seconds
    return deadline - before <= first_at <= deadline + after


def deadline_candidates(
    deposits: Sequence[PublicDeposit],
    records: Mapping[str, AddressRecord],
    timing: TimingRules,
    *,
    rules: FeeRules | None = None,
) -> dict[str, frozenset[str]]:
    """Address -> refs of the deposits whose deadline band holds its first payout.

    Args:
        deposits, records: the public view's deposits and per-address records.
        timing: the documented timing (``max_wait_seconds`` is the deadline after arrival).
        rules: when given, only deposits that could pay the address's total alone count
            (``single+deadline``); otherwise every time-compatible deposit (``timing+deadline``).

    Returns:
        The band's deposits where there are any, else every candidate of the base attack.
    """
    timeline = DepositTimeline(deposits)
    out: dict[str, frozenset[str]] = {}
    for address, record in records.items():
        base = [
            d for d in timeline.compatible(record, timing) if rules is None or rules.could_pay(d.amount, record.total)
        ]
        band = [d for d in base if _in_band(d, record.first_at, timing)]
        out[address] = frozenset(d.ref for d in (band or base))
    return out
