"""The analyzer: runs the public attacks on a view and reports what each can link.

Attacks (names are the keys of :attr:`Report.attacks`):

* ``amount``: groups of addresses whose totals a deposit could pay, ignoring time.
* ``amount+window``: the same, among the addresses whose payouts fit the deposit's window.
* ``amount+window+structure``: the same, with the documented shape of plans applied
  (:mod:`~mixhouse.mixer.privacy.structure`), then peeling of forced matches.
* ``timing``: the deposits whose window an address's payouts fit.
* ``timing+fifo``: the window candidates, each address claimed by the earliest fitting
  deposit not claimed yet.
* ``single``: each address taken alone as a whole mix (time-compatible deposits that could
  pay its total); the parsimonious attacker against denominated payouts.
* ``single+gate``: ``single``, with the candidates the release gate's documented choice of
  total rules out removed (:mod:`~mixhouse.mixer.privacy.inversion`).
* ``timing+deadline``, ``single+deadline``: the deposits whose documented maximum wait ends
  when an address's payouts start (:mod:`~mixhouse.mixer.privacy.deadline`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mixhouse.mixer.privacy.amounts import DEFAULT_GROUP_CAP, GroupSearch, search_groups, single_candidates
from mixhouse.mixer.privacy.deadline import deadline_candidates
from mixhouse.mixer.privacy.grouping import Peeled, found_groups, peel, unpeeled
from mixhouse.mixer.privacy.inversion import gate_inversion_candidates
from mixhouse.mixer.privacy.records import AddressRecord, PublicView, address_records
from mixhouse.mixer.privacy.rules import FeeRules
from mixhouse.mixer.privacy.structure import admits, group_shape, machine_made, plausible_address
from mixhouse.mixer.privacy.timing import DepositTimeline, TimingRules, fifo_links, window_candidates

AMOUNT = "amount"
AMOUNT_WINDOW = "amount+window"
AMOUNT_WINDOW_STRUCTURE = "amount+window+structure"
TIMING = "timing"
TIMING_FIFO = "timing+fifo"
SINGLE = "single"
SINGLE_GATE = "single+gate"
TIMING_DEADLINE = "timing+deadline"
SINGLE_DEADLINE = "single+deadline"
ATTACKS = (
    AMOUNT,
    AMOUNT_WINDOW,
    AMOUNT_WINDOW_STRUCTURE,
    TIMING,
    TIMING_FIFO,
    SINGLE,
    SINGLE_GATE,
    TIMING_DEADLINE,
    SINGLE_DEADLINE,
)


@dataclass(frozen=True, slots=True)
class AddressFinding:
    """What one attack says about one withdrawal address.

    Attributes:
        address: the withdrawal address.
        candidates: refs of the deposits it could belong to.
        claimed: the deposit ref the attack links it to (the only candidate, or FIFO's pick),
            or ``None``.
    """

    address: str
    candidates: frozenset[str]
    claimed: str | None

    @property
    def anonymity_set(self) -> int:
        """Number of deposits the address could belong to (0: the attack rules out all)."""
        return len(self.candidates)


@dataclass(frozen=True, slots=True)
class AttackResult:
    """One attack's findings.

    Attributes:
        name: the attack (one of :data:`ATTACKS`).
        findings: address -> :class:`AddressFinding`, every withdrawal address of the view.
        groups: address sets found (see :func:`~mixhouse.mixer.privacy.grouping.found_groups`);
            empty for attacks without a group search.
        capped: refs of the deposits whose group search hit the cap.
    """

    name: str
    findings: Mapping[str, AddressFinding]
    groups: tuple[frozenset[str], ...] = ()
    capped: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Report:
    """The analysis of a view.

    Attributes:
        attacks: attack name -> :class:`AttackResult`, for the attacks run.
        withdrawal_addresses: every address the pool paid.
        deposit_refs: every deposit of the view.
        payouts: number of payouts.
        machine_made_payouts: payouts showing all eight decimals (a tell of computed splits).
    """

    attacks: Mapping[str, AttackResult]
    withdrawal_addresses: tuple[str, ...]
    deposit_refs: tuple[str, ...]
    payouts: int
    machine_made_payouts: int


def _findings(candidates: Mapping[str, frozenset[str]], addresses: Sequence[str]) -> dict[str, AddressFinding]:
    result: dict[str, AddressFinding] = {}
    for address in addresses:
        refs = candidates.get(address, frozenset())
        result[address] = AddressFinding(address, refs, next(iter(refs)) if len(refs) == 1 else None)
    return result


def _group_attack(name: str, searches: Sequence[GroupSearch], state: Peeled, addresses: Sequence[str]) -> AttackResult:
    return AttackResult(
        name=name,
        findings=_findings(state.candidates(addresses), addresses),
        groups=found_groups(state),
        capped=frozenset(s.deposit_ref for s in searches if s.capped),
    )


def analyze(
    view: PublicView,
    rules: FeeRules,
    timing: TimingRules,
    *,
    attacks: Sequence[str] = ATTACKS,
    cap: int = DEFAULT_GROUP_CAP,
) -> Report:
    """Run the public attacks on ``view``.

    Args:
        view: the public view (see :func:`~mixhouse.mixer.privacy.records.view_from_transfers`).
        rules: the documented fee rules of the planner in use.
        timing: the documented timing rules.
        attacks: which attacks to run (names from :data:`ATTACKS`), e.g. to time them one by one.
        cap: groups examined per deposit and attack before the deposit counts as "many".

    Returns:
        The :class:`Report`.

    Raises:
        ValueError: an unknown attack name.
    """
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        raise ValueError(f"unknown attacks: {sorted(unknown)}")
    records = address_records(view)
    addresses = tuple(records)
    deposits = view.deposits
    timeline = DepositTimeline(deposits)
    in_window: dict[str, list[AddressRecord]] = {d.ref: [] for d in deposits}
    if AMOUNT_WINDOW in attacks or AMOUNT_WINDOW_STRUCTURE in attacks:
        for record in records.values():
            for deposit in timeline.compatible(record, timing):
                in_window[deposit.ref].append(record)
    results: dict[str, AttackResult] = {}
    for name in attacks:
        if name == AMOUNT:
            everyone = list(records.values())
            searches = [
                search_groups(d, everyone, rules, max_addresses=timing.max_addresses, cap=cap) for d in deposits
            ]
            results[name] = _group_attack(name, searches, unpeeled(searches), addresses)
        elif name == AMOUNT_WINDOW:
            searches = [
                search_groups(d, in_window[d.ref], rules, max_addresses=timing.max_addresses, cap=cap) for d in deposits
            ]
            results[name] = _group_attack(name, searches, unpeeled(searches), addresses)
        elif name == AMOUNT_WINDOW_STRUCTURE:
            shape = group_shape(rules)
            plausible = {a for a, r in records.items() if plausible_address(r, rules, timing)}
            searches = [
                search_groups(
                    d,
                    [r for r in in_window[d.ref] if r.address in plausible and admits(d.amount, r, rules)],
                    rules,
                    max_addresses=timing.max_addresses,
                    cap=cap,
                    shape=shape,
                )
                for d in deposits
            ]
            results[name] = _group_attack(name, searches, peel(searches, addresses), addresses)
        elif name == TIMING:
            results[name] = AttackResult(name, _findings(window_candidates(deposits, records, timing), addresses))
        elif name == TIMING_FIFO:
            window = window_candidates(deposits, records, timing)
            links = fifo_links(deposits, records, timing)
            results[name] = AttackResult(
                name,
                {a: AddressFinding(a, window.get(a, frozenset()), links.get(a)) for a in addresses},
            )
        elif name == SINGLE:
            results[name] = AttackResult(
                name, _findings(single_candidates(deposits, records, rules, timing), addresses)
            )
        elif name == TIMING_DEADLINE:
            results[name] = AttackResult(name, _findings(deadline_candidates(deposits, records, timing), addresses))
        elif name == SINGLE_DEADLINE:
            found = deadline_candidates(deposits, records, timing, rules=rules)
            results[name] = AttackResult(name, _findings(found, addresses))
        else:  # SINGLE_GATE
            inverted = gate_inversion_candidates(deposits, records, rules, timing)
            results[name] = AttackResult(name, _findings(inverted, addresses))
    return Report(
        attacks=results,
        withdrawal_addresses=addresses,
        deposit_refs=tuple(d.ref for d in deposits),
        payouts=len(view.payouts),
        machine_made_payouts=sum(1 for p in view.payouts if machine_made(p.amount)),
    )
