"""The gate-inversion attack: the ``single`` attack, refined by the release gate's own policy.

The release gate (``mixer/gate.py``) may re-choose a deposit's payout total among the totals
the deposit can have: one whose release set reaches ``k``, or, at the maximum wait, the one with
the largest set. The policy is documented, so an attacker can run it backwards: an address that
received ``T`` in all, taken as a whole mix, could come from deposit ``d`` only if the gate would
have let ``d`` go with ``T`` -

* ``T``'s own set is at least ``k`` (then any candidate could have drawn or picked it), or
* none of ``d``'s totals reaches ``k``, and ``T``'s set is at least 2 (drawn and kept, or
  picked among the totals with company) or none of ``d``'s totals has a set of 2 or more.

A candidate ``d`` with another total reaching ``k``, or one with company when ``T`` has none,
is ruled out. (The gate once took the largest set at the maximum wait; run backwards, that
ruled out every candidate with a larger set on another total, and was the strongest attack on
a 0.5-5% fee range: 1.8% linked on the realistic population, seed 7.) Sets are
measured at the address's payout times (the gate measured them at release, a round earlier at
most), over the deposits that fit those times.
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
    *,
    k: int,
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
        if not isinstance(rules, DenominatedRules) or len(base) >= k:
            out[address] = frozenset(d.ref for d in base)
            continue
        sizes = _Sizes(fitting, rules)
        own = len(base)
        kept = []
        for d in base:
            others = [
                sizes.of(t)
                for t in candidate_totals(
                    d.amount,
                    rules.fee_min_bps,
                    rules.fee_max_bps,
                    network_fee=rules.network_fee,
                    min_payout=rules.min_payout,
                )
            ]
            if any(s >= k for s in others) or (own < COMPANY and max(others, default=own) >= COMPANY):
                continue  # the gate would have released d with another total
            kept.append(d.ref)
        out[address] = frozenset(kept)
    return out
