"""Scoring a report against the ground truth, and the release gate's cheap set size.

Percentages are floats (statistics, not money).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mixhouse.mixer.privacy.analyzer import Report
from mixhouse.mixer.privacy.records import PublicDeposit
from mixhouse.mixer.privacy.rules import FeeRules
from mixhouse.mixer.privacy.timing import TimingRules, fits_window


@dataclass(frozen=True, slots=True)
class AttackScore:
    """How well one attack did.

    Attributes:
        name: the attack.
        addresses: withdrawal addresses in the truth.
        claims: addresses the attack claimed a link for.
        correct: claims that were right.
        linked_pct: ``correct / addresses``, percent.
        precision_pct: ``correct / claims``, percent (100 when nothing was claimed).
        set_p10, set_p50, set_p90: anonymity-set sizes of the true addresses (nearest rank).
        deposits_deanonymised_pct: deposits all of whose addresses were correctly linked, percent.
        groups_found_pct: users with 2+ addresses whose address set the attack found as a
            group, percent of such users (0 when there are none).
    """

    name: str
    addresses: int
    claims: int
    correct: int
    linked_pct: float
    precision_pct: float
    set_p10: int
    set_p50: int
    set_p90: int
    deposits_deanonymised_pct: float
    groups_found_pct: float


@dataclass(frozen=True, slots=True)
class Score:
    """Every attack's score, and the attack that linked the most addresses."""

    attacks: Mapping[str, AttackScore]
    best: str


def percentile(values: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of ``values`` (``fraction`` in [0, 1]); 0 for no values."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(1, -(-int(fraction * 1000) * len(ordered) // 1000))
    return ordered[min(rank, len(ordered)) - 1]


def _pct(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


def score(report: Report, truth: Mapping[str, str]) -> Score:
    """Score every attack of ``report``.

    Args:
        report: the analysis.
        truth: withdrawal address -> the ref of the deposit it really belongs to.

    Returns:
        A :class:`Score`; ``best`` is the attack with the highest ``linked_pct`` (the first
        in report order on ties).

    Raises:
        ValueError: the report has no attacks.
    """
    if not report.attacks:
        raise ValueError("the report has no attacks to score")
    by_deposit: dict[str, set[str]] = {}
    for address, ref in truth.items():
        by_deposit.setdefault(ref, set()).add(address)
    multi = [frozenset(s) for s in by_deposit.values() if len(s) >= 2]
    scores: dict[str, AttackScore] = {}
    for name, result in report.attacks.items():
        claims = sum(1 for f in result.findings.values() if f.claimed is not None)
        right = {a for a, ref in truth.items() if (f := result.findings.get(a)) is not None and f.claimed == ref}
        sizes = [len(f.candidates) if (f := result.findings.get(a)) is not None else 0 for a in truth]
        groups = set(result.groups)
        scores[name] = AttackScore(
            name=name,
            addresses=len(truth),
            claims=claims,
            correct=len(right),
            linked_pct=_pct(len(right), len(truth)),
            precision_pct=_pct(len(right), claims) if claims else 100.0,
            set_p10=percentile(sizes, 0.10),
            set_p50=percentile(sizes, 0.50),
            set_p90=percentile(sizes, 0.90),
            deposits_deanonymised_pct=_pct(sum(1 for s in by_deposit.values() if s <= right), len(by_deposit)),
            groups_found_pct=_pct(sum(1 for s in multi if s in groups), len(multi)),
        )
    best = max(scores.values(), key=lambda s: s.linked_pct).name
    return Score(attacks=scores, best=best)


def release_set(
    total: int,
    *,
    first_payout_at: float,
    last_payout_at: float,
    recent_deposits: Iterable[PublicDeposit],
    rules: FeeRules,
    timing: TimingRules,
) -> int:
    """For the release gate: how many deposits an attacker could not rule out for a mix if it
    released payouts totalling ``total`` between ``first_payout_at`` and ``last_payout_at``.

    A deposit counts when the ``single`` test (it could pay ``total``) and the window test
    (all the payout times fit its window) both pass; the mix's own deposit passes both, so the
    result is at least 1 for a release the rules allow. O(len(recent_deposits)).

    Args:
        total: base units the mix's addresses would have received in all.
        first_payout_at, last_payout_at: the times of the mix's first and last payout, seconds.
        recent_deposits: the public deposits that could still be paying out (the caller keeps
            those of the last ``max_wait`` seconds plus a round).
        rules, timing: the documented rules.
    """
    return sum(
        1
        for d in recent_deposits
        if fits_window(d.at, first_payout_at, last_payout_at, timing) and rules.could_pay(d.amount, total)
    )
