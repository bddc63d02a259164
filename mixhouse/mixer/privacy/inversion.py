"""The gate-inversion attack: the ``single`` attack, refined by the release gate's own policy.

The release gate (``mixer/gate.py``) may re-choose a deposit's payout total among the totals
the deposit can have, at its secret fallback moment, when the drawn total is alone: one whose
release set reaches ``k``, else one with company (a set of 2 or more). The policy is documented,
so an attacker can run it backwards: an address that received ``T`` in all, taken as a whole
mix, could come from deposit ``d`` only if the gate would have let ``d`` go with ``T`` -

* ``T``'s set is at least 2 (any candidate could have drawn it and reached ``k``, or kept it
  at its fallback moment), or
* ``T`` is alone and none of ``d``'s totals has company (released as drawn at the deadline).

So a candidate is ruled out only when ``T`` is alone, which leaves at most one candidate: the
attack can only ever turn a link of ``single`` into no candidate at all. (Two earlier policies
were weaker: "the largest set at the maximum wait" ruled out every candidate with a larger set
on another total, 1.8% linked on the realistic population at seed 7; "re-plan as soon as another
total reaches ``k``" ruled out every rival that had such a total, 1.1-1.4% linked against
0.5-1.1% for ``single``.) Sets are measured at the address's payout times, over the deposits
that fit those times.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

from mixhouse.mixer.planner import candidate_totals
from mixhouse.mixer.privacy.records import AddressRecord, PublicDeposit
from mixhouse.mixer.privacy.rules import DenominatedRules, FeeRules
from mixhouse.mixer.privacy.timing import DepositTimeline, TimingRules

# The gate's ``COMPANY`` (mixhouse.mixer.gate): the set a total needs at the fallback moment to
# be kept or picked. Restated, not imported: the analyzer is a pure core with no DB imports.
COMPANY = 2


class _Sizes:
    """Release-set sizes of totals among the deposits that fit one address's payout times."""

    def __init__(self, fitting: Sequence[PublicDeposit], rules: FeeRules) -> None:
        self._deposits = sorted(fitting, key=lambda d: d.amount)
        self._amounts = [d.amount for d in self._deposits]
        self._rules = rules
        self._memo: dict[int, int] = {}

    def of(self, total: int) -> int:
        if total not in self._memo:
            # Any deposit that can pay ``total`` lies in [total, 2 x total] (fees under 50%).
            lo = bisect.bisect_left(self._amounts, total)
            hi = bisect.bisect_right(self._amounts, 2 * total)
            self._memo[total] = sum(1 for d in self._deposits[lo:hi] if self._rules.could_pay(d.amount, total))
        return self._memo[total]


def gate_inversion_candidates(
    deposits: Sequence[PublicDeposit],
    records: Mapping[str, AddressRecord],
    rules: FeeRules,
    timing: TimingRules,
) -> dict[str, frozenset[str]]:
    """Address -> refs of the deposits that could have paid its total alone *and* whose release
    the gate would have made with that total (see the module docstring).

    With fee rules that have no candidate totals (the legacy planner), this is the ``single``
    attack.
    """
    timeline = DepositTimeline(deposits)
    out: dict[str, frozenset[str]] = {}
    for address, record in records.items():
        fitting = timeline.compatible(record, timing)
        base = [d for d in fitting if rules.could_pay(d.amount, record.total)]
        if not isinstance(rules, DenominatedRules) or len(base) >= COMPANY:
            out[address] = frozenset(d.ref for d in base)
            continue
        sizes = _Sizes(fitting, rules)
        kept = []
        for d in base:
            others = (
                sizes.of(t)
                for t in candidate_totals(
                    d.amount,
                    rules.fee_min_bps,
                    rules.fee_max_bps,
                    network_fee=rules.network_fee,
                    min_payout=rules.min_payout,
                )
            )
            if any(s >= COMPANY for s in others):
                continue  # the gate would have released d with a total that had company
            kept.append(d.ref)
        out[address] = frozenset(kept)
    return out
