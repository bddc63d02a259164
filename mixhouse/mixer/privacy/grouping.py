"""Address-set grouping and the peeling of forced matches.

Both rest on two facts of the service: every withdrawal address belongs to exactly one
deposit's mix, and a mix's payouts go to all of its addresses (so the true group of a deposit
is one of the groups the search found, unless the search was capped).

* **Grouping**: if every group (of any deposit) an address appears in is the same set ``S``,
  then ``S`` is its mix's address set, even when the deposit itself stays ambiguous.
* **Peeling**: an address with one candidate deposit belongs to it; a deposit with one group
  left owns that group; an assigned address leaves every other deposit's groups (and a
  deposit keeps only the groups holding all the addresses assigned to it). Repeat until
  nothing changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mixhouse.mixer.privacy.amounts import GroupSearch


@dataclass(frozen=True, slots=True)
class Peeled:
    """The state after peeling.

    Attributes:
        groups: per deposit whose search completed, the groups still possible.
        many: per capped deposit, the addresses it still cannot be ruled out for.
        assigned: address -> the deposit ref it was forced to.
    """

    groups: Mapping[str, tuple[frozenset[str], ...]]
    many: Mapping[str, frozenset[str]]
    assigned: Mapping[str, str]

    def candidates(self, addresses: Iterable[str]) -> dict[str, frozenset[str]]:
        """address -> the deposit refs still possible for it (empty if none)."""
        return _candidates(self.groups, self.many, addresses)


def _candidates(
    groups: Mapping[str, Iterable[frozenset[str]]], many: Mapping[str, Iterable[str]], addresses: Iterable[str]
) -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = {a: set() for a in addresses}
    for ref, deposit_groups in groups.items():
        for group in deposit_groups:
            for address in group:
                found.setdefault(address, set()).add(ref)
    for ref, members in many.items():
        for address in members:
            found.setdefault(address, set()).add(ref)
    return {a: frozenset(refs) for a, refs in found.items()}


def unpeeled(searches: Iterable[GroupSearch]) -> Peeled:
    """The searches as they are, nothing assigned."""
    listed = list(searches)
    return Peeled(
        groups={s.deposit_ref: s.groups for s in listed if not s.capped},
        many={s.deposit_ref: s.considered for s in listed if s.capped},
        assigned={},
    )


def peel(searches: Iterable[GroupSearch], addresses: Iterable[str]) -> Peeled:
    """Peel forced matches until nothing changes (see the module docstring).

    Args:
        searches: one :class:`GroupSearch` per deposit.
        addresses: every withdrawal address of the view (so ones in no group are known).

    Returns:
        The :class:`Peeled` state. An address is assigned at most once; when two forced
        matches contradict each other (which a sound filter never causes), the first wins.
    """
    start = unpeeled(searches)
    groups = {ref: list(gs) for ref, gs in start.groups.items()}
    many = {ref: set(members) for ref, members in start.many.items()}
    everyone = list(addresses)
    assigned: dict[str, str] = {}
    while True:
        candidates = _candidates(groups, many, everyone)
        new: dict[str, str] = {}
        for address, refs in candidates.items():
            if address not in assigned and len(refs) == 1:
                new[address] = next(iter(refs))
        for ref, deposit_groups in groups.items():
            if len(deposit_groups) == 1:
                for address in deposit_groups[0]:
                    if address not in assigned:
                        new.setdefault(address, ref)
        if not new:
            break
        assigned.update(new)
        owned: dict[str, set[str]] = {}
        for address, ref in assigned.items():
            owned.setdefault(ref, set()).add(address)
        for ref, deposit_groups in groups.items():
            mine = owned.get(ref, set())
            groups[ref] = [g for g in deposit_groups if mine <= g and all(assigned.get(a, ref) == ref for a in g)]
        for ref, members in many.items():
            many[ref] = {a for a in members if assigned.get(a, ref) == ref}
    return Peeled(
        groups={ref: tuple(gs) for ref, gs in groups.items()},
        many={ref: frozenset(members) for ref, members in many.items()},
        assigned=assigned,
    )


def found_groups(state: Peeled) -> tuple[frozenset[str], ...]:
    """The address sets the state reveals: sets ``S`` of 2 or more addresses such that, for
    some member, ``S`` is the only group (over all deposits) it appears in and no capped
    deposit still counts it among its "many".

    Returns:
        The sets, sorted by their smallest address.
    """
    uncertain = set().union(*state.many.values()) if state.many else set()
    containing: dict[str, set[frozenset[str]]] = {}
    for deposit_groups in state.groups.values():
        for group in deposit_groups:
            for address in group:
                containing.setdefault(address, set()).add(group)
    sets = {
        next(iter(gs))
        for address, gs in containing.items()
        if address not in uncertain and len(gs) == 1 and len(next(iter(gs))) >= 2
    }
    return tuple(sorted(sets, key=lambda s: (min(s), len(s))))
