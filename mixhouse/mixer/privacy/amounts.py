"""The amount attack: which groups of withdrawal addresses a deposit's payouts could be.

For a deposit ``d`` and its candidate addresses, a *group* is a set ``S`` of 1 to
``max_addresses`` addresses whose total received ``T`` satisfies ``rules.could_pay(d, T)``
(and, when a :class:`~mixhouse.mixer.privacy.structure.GroupShape` is given, the planner's
documented shape). An address is an amount-candidate of ``d`` iff it is in at least one group.

The search is a meet in the middle. Candidates are sorted by total; every group is a *head*
(its smallest members, enumerated depth-first with the partial sum pruned from above by the
deposit's top bound and from below by what the largest candidates could still add) and a
*tail* of its ``TAIL`` largest members, looked up in a table of all small subsets:

* when the rules make valid totals a congruence (:func:`congruence`), the table is sorted by
  each subset's residue and a head needs only the tails in one narrow residue window. For the
  legacy rules a total ``T`` is valid only if ``10^4 T mod D <= 9999`` (a fee of
  ``floor(D x bps / 10^4)``), about one integer in ``D / 10^4``, so a lookup returns almost
  only true matches and the search is exact unless capped;
* otherwise the table is sorted by sum and a head needs the tails in ``[bottom - s, top - s]``.

Every match is then checked exactly (``could_pay``, the shape). The work per deposit (heads
examined, table entries built, matches checked) is capped; a capped deposit keeps every
address it considered as a candidate ("many"): the attacker cannot rule any of them out.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mixhouse.mixer.planner import payout_quantum
from mixhouse.mixer.privacy.records import AddressRecord, PublicDeposit
from mixhouse.mixer.privacy.rules import DenominatedRules, FeeRules, LegacyBpsRules
from mixhouse.mixer.privacy.structure import GroupShape
from mixhouse.mixer.privacy.timing import DepositTimeline, TimingRules

# Work units (heads examined, table entries built, matches checked) per deposit before the
# search gives up and calls the deposit's candidates "many": bounds the analysis of a dense
# population to seconds.
DEFAULT_GROUP_CAP = 20_000
# Members looked up as a tail: triples. Only the triples that can end a group are built (their
# sum, plus the smaller head members, must be able to reach the bottom bound), which keeps the
# table small; every group of up to 3 + h members costs one lookup per head of h members.
TAIL = 3


@dataclass(frozen=True, slots=True)
class GroupSearch:
    """The outcome of the group search for one deposit.

    Attributes:
        deposit_ref: the deposit searched.
        considered: the addresses the search started from (after the caller's filters and
            ``total <= top bound``).
        groups: every group, each a set of addresses; empty when ``capped``.
        capped: the search stopped at the cap (its groups would be only some of them).
        explored: work units spent (at most the cap).
    """

    deposit_ref: str
    considered: frozenset[str]
    groups: tuple[frozenset[str], ...]
    capped: bool
    explored: int

    @property
    def candidates(self) -> frozenset[str]:
        """The deposit's amount-candidates: every member of a group, or every considered
        address when capped (the attacker cannot rule any of them out)."""
        if self.capped:
            return self.considered
        return frozenset().union(*self.groups)


@dataclass(frozen=True, slots=True)
class Congruence:
    """A necessary condition on valid totals: ``(multiplier x T) mod modulus <= width``.

    Attributes:
        modulus, multiplier, width: the condition.
        exact: inside the rules' total bounds the condition is also sufficient, so the search
            may test it instead of calling ``could_pay`` (a cheaper test for dense matches).
    """

    modulus: int
    multiplier: int
    width: int
    exact: bool = False

    def residue(self, total: int) -> int:
        """``(multiplier x total) mod modulus``."""
        return (self.multiplier * total) % self.modulus

    def windows(self, head_residue: int) -> tuple[tuple[int, int], ...]:
        """The tail residues ``r`` (inclusive ranges) for which ``head + r`` is valid."""
        start = (-head_residue) % self.modulus
        end = start + self.width
        if end < self.modulus:
            return ((start, end),)
        return ((start, self.modulus - 1), (0, end - self.modulus))


def congruence(rules: FeeRules, deposit: int) -> Congruence | None:
    """The congruence every valid total of ``deposit`` satisfies, if the rules imply one.

    * Legacy: ``T = D - floor(D b / 10^4)`` gives ``10^4 T = D (10^4 - b) + r`` with
      ``0 <= r <= 9999``, so ``10^4 T mod D = r <= 9999`` (a filter only when ``D > 9999``).
    * Denominated: ``T`` is a multiple of the deposit's quantum.
    """
    if isinstance(rules, LegacyBpsRules) and deposit > 9_999:
        return Congruence(modulus=deposit, multiplier=10_000, width=9_999)
    if isinstance(rules, DenominatedRules):
        q = payout_quantum(deposit, rules.fee_min_bps, rules.fee_max_bps, minimum=rules.min_payout)
        if q > 1:
            # DenominatedRules.could_pay is exactly "inside the bounds and a multiple of q".
            return Congruence(modulus=q, multiplier=1, width=0, exact=True)
    return None


class _CapReached(Exception):
    """Raised inside the search to unwind once the cap is reached."""


class _Budget:
    """Counts work units; raises :class:`_CapReached` past the cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.spent = 0

    def spend(self, units: int = 1) -> None:
        self.spent += units
        if self.spent > self.cap:
            raise _CapReached


def _shape_ok(shape: GroupShape | None, *, size: int, count: int, lo: int, hi: int, bottom: int, top: int) -> bool:
    """Whether a whole group has the documented shape, and (legacy) pieces that fit its count."""
    if shape is None:
        return True
    if not shape.admits(size, count, lo, hi):
        return False
    if shape.share_weights is None:
        return True
    smallest, largest = shape.piece_range(bottom, top, count)
    return smallest <= lo and hi <= largest


def search_groups(
    deposit: PublicDeposit,
    candidates: Sequence[AddressRecord],
    rules: FeeRules,
    *,
    max_addresses: int,
    cap: int = DEFAULT_GROUP_CAP,
    shape: GroupShape | None = None,
) -> GroupSearch:
    """Find the groups of ``candidates`` that the deposit's payouts could be.

    Args:
        deposit: the deposit (its ``amount`` is what ``rules`` see as the pooled amount).
        candidates: the addresses to combine (the caller's time and structure filters
            applied); those with a total above the deposit's top bound are dropped here.
        rules: the documented fee rules.
        max_addresses: the largest group, addresses.
        cap: work units before giving up (see :class:`GroupSearch`).
        shape: the planner's documented shape rules, if the attacker applies them.

    Returns:
        A :class:`GroupSearch`.
    """
    amount = deposit.amount
    bottom, top = rules.total_bounds(amount)
    pool = sorted((r for r in candidates if 0 < r.total <= top), key=lambda r: (r.total, r.address))
    addresses = [r.address for r in pool]
    budget = _Budget(cap)
    found: set[tuple[int, ...]] = set()
    capped = False
    try:
        _search(
            pool,
            rules=rules,
            amount=amount,
            bottom=bottom,
            top=top,
            max_addresses=max_addresses,
            shape=shape,
            modular=congruence(rules, amount),
            budget=budget,
            found=found,
        )
    except _CapReached:
        capped = True
    return GroupSearch(
        deposit_ref=deposit.ref,
        considered=frozenset(addresses),
        # A capped search's groups are only some of them and nothing may rely on them: not kept.
        groups=() if capped else tuple(frozenset(addresses[i] for i in group) for group in sorted(found)),
        capped=capped,
        explored=min(budget.spent, cap),
    )


def _search(
    pool: Sequence[AddressRecord],
    *,
    rules: FeeRules,
    amount: int,
    bottom: int,
    top: int,
    max_addresses: int,
    shape: GroupShape | None,
    modular: Congruence | None,
    budget: _Budget,
    found: set[tuple[int, ...]],
) -> None:
    """The meet in the middle (see the module docstring); adds the groups to ``found`` as
    ascending tuples of positions in ``pool`` (sorted by total)."""
    n = len(pool)
    totals = [r.total for r in pool]
    counts = [r.count for r in pool]
    mins = [r.min_piece for r in pool]
    maxs = [r.max_piece for r in pool]
    prefix = [0]
    for t in totals:
        prefix.append(prefix[-1] + t)
    ratio = shape.ratio if shape is not None else None
    per_address = shape.max_pieces_per_address if shape is not None else None
    # The loosest rounding slack any group may need, for pruning partial groups.
    worst_slack = shape.ratio_slack((per_address or max(counts, default=1)) * max_addresses) if shape else 0
    could_pay: Callable[[int, int], bool] = rules.could_pay
    tail = min(TAIL, max_addresses)
    heads_after = max_addresses - tail  # head members a group may have besides its tail

    def largest(r: int) -> int:
        """Sum of the ``r`` largest totals (all of them if fewer)."""
        return prefix[n] - prefix[max(0, n - r)]

    if modular is not None and modular.exact:
        exact = modular

        def valid(_: int, total: int) -> bool:
            return exact.residue(total) <= exact.width

        could_pay = valid

    def accept(members: tuple[int, ...], total: int, count: int, lo: int, hi: int) -> None:
        """Record ``members`` if they make a valid group (the caller checked the bounds)."""
        if could_pay(amount, total) and _shape_ok(
            shape, size=len(members), count=count, lo=lo, hi=hi, bottom=bottom, top=top
        ):
            found.add(members)

    # Level j: subsets of j candidates (sum, members, count, smallest piece, largest piece)
    # that are a whole group (checked as they are made) or can still grow into a tail.
    level: list[tuple[int, tuple[int, ...], int, int, int]] = []
    for x in range(n):
        budget.spend()
        level.append((totals[x], (x,), counts[x], mins[x], maxs[x]))
        if bottom <= totals[x]:
            accept((x,), totals[x], counts[x], mins[x], maxs[x])
    # The hottest loop: its work is counted in a local and charged to the budget as it goes.
    work, cap = budget.spent, budget.cap
    for size in range(2, tail + 1):
        grown: list[tuple[int, tuple[int, ...], int, int, int]] = []
        more = tail - size  # members the tail still needs after this one
        for s, members, count, lo, hi in level:
            # The group's other members (its head) are no larger than the tail's smallest, so
            # a tail reaching the bottom bound needs at least this much from the next member.
            reach = largest(more) + heads_after * totals[members[0]]
            begin = max(members[-1] + 1, bisect.bisect_left(totals, bottom - s - reach))
            for x in range(begin, n):
                new_s = s + totals[x]
                if new_s > top:
                    break  # sorted by total: every later candidate is larger still
                work += 1
                if work > cap:
                    budget.spent = work
                    raise _CapReached
                new_lo = min(lo, mins[x])
                new_hi = max(hi, maxs[x])
                if ratio is not None and new_hi > ratio * new_lo + worst_slack:
                    continue
                grown_members = (*members, x)
                new_count = count + counts[x]
                if bottom <= new_s:
                    accept(grown_members, new_s, new_count, new_lo, new_hi)
                if more and (x + 1 + more > n or new_s + prefix[x + 1 + more] - prefix[x + 1] > top):
                    continue  # a whole group at most: no tail of `tail` members starts so
                grown.append((new_s, grown_members, new_count, new_lo, new_hi))
        level = grown
    budget.spent = work
    if heads_after <= 0 or not level:
        return

    # The tails, sorted by residue (or by sum), for the heads to look up.
    rows = sorted(
        ((modular.residue(s) if modular is not None else s), s, members, count, lo, hi)
        for s, members, count, lo, hi in level
        if s + heads_after * totals[members[0]] >= bottom
    )
    keys = [r[0] for r in rows]

    def complete(head: tuple[int, ...], s: int, count: int, lo: int, hi: int) -> None:
        """Every tail after the head that makes a valid group."""
        after = head[-1]
        ranges = modular.windows(modular.residue(s)) if modular is not None else ((bottom - s, top - s),)
        for key_low, key_high in ranges:
            for j in range(bisect.bisect_left(keys, key_low), bisect.bisect_right(keys, key_high)):
                budget.spend()
                _, tail_sum, members, tail_count, tail_lo, tail_hi = rows[j]
                if members[0] > after and bottom <= s + tail_sum <= top:
                    accept(
                        (*head, *members),
                        s + tail_sum,
                        count + tail_count,
                        min(lo, tail_lo),
                        max(hi, tail_hi),
                    )

    def heads(start: int, left: int, head: tuple[int, ...], *, s: int, count: int, lo: int, hi: int) -> None:
        """Heads of ``left`` more members from ``start`` on, each completed by a tail."""
        if left == 0:
            complete(head, s, count, lo, hi)
            return
        # Members too small to reach the bottom bound even with the largest others.
        begin = bisect.bisect_left(totals, bottom - s - largest(left - 1 + tail), start)
        for x in range(begin, n - left - tail + 1):
            new_s = s + totals[x]
            if new_s + prefix[x + left + tail] - prefix[x + 1] > top:
                break  # the smallest completion from here on is already too large
            budget.spend()
            new_lo = min(lo, mins[x])
            new_hi = max(hi, maxs[x])
            if ratio is not None and new_hi > ratio * new_lo + worst_slack:
                continue
            new_count = count + counts[x]
            if per_address is not None and new_count > per_address * max_addresses:
                continue
            heads(x + 1, left - 1, (*head, x), s=new_s, count=new_count, lo=new_lo, hi=new_hi)

    no_piece = max(maxs, default=0) + 1
    # Heads of 1, 2, ... members, so that small groups are all found before the cap can stop
    # the search.
    for head_size in range(1, heads_after + 1):
        if head_size + tail > n or prefix[head_size + tail] > top:
            break
        heads(0, head_size, (), s=0, count=0, lo=no_piece, hi=0)


def single_candidates(
    deposits: Sequence[PublicDeposit],
    records: Mapping[str, AddressRecord],
    rules: FeeRules,
    timing: TimingRules,
) -> dict[str, frozenset[str]]:
    """The parsimonious attack: each address taken alone as a whole mix.

    Returns:
        address -> refs of the time-compatible deposits that could pay its total.
    """
    timeline = DepositTimeline(deposits)
    return {
        address: frozenset(
            d.ref for d in timeline.compatible(record, timing) if rules.could_pay(d.amount, record.total)
        )
        for address, record in records.items()
    }
