"""The release gate: when a pooled deposit's payouts may leave, and with which total.

Each payout round (``mixer/rounds.py``) first runs :func:`release_gate` for its asset. A pooled
deposit whose first piece is due is measured with the analyzer's
:func:`~mixhouse.mixer.privacy.score.release_set`: how many public deposits an attacker could
not rule out as the one that paid its total, if its payouts left now.

**The total is chosen here, not at pooling.** A deposit of ``P`` may pay any multiple of its
quantum inside the quoted range (:func:`~mixhouse.mixer.planner.candidate_totals`, 2 to 20 of
them). The fee drawn at pooling gave one of them at random, in secret; the gate releases it as
drawn or, where the drawn one is alone, re-plans the deposit's pieces for another (:func:`decide`):

* the drawn total's set is ``>= k``: released as planned;
* otherwise held until the deposit's fallback moment (``deposits.release_by``), drawn in secret,
  uniformly between its first due piece and its latest release (:func:`_fallback_moments`):
  waiting for the maximum wait itself would send every thin deposit's payouts at
  ``arrival + max_wait``, which anyone can compute;
* at the fallback moment: released with the drawn total if its set is at least 2, else with a
  total drawn uniformly among those whose set reaches ``k``, else among those whose set is at
  least 2 (a lone amount gets company where the range allows); a deposit with no such total
  waits for company up to its latest release moment, then goes as drawn. Never "the largest
  set", and never a re-plan before the fallback moment: either choice can be run backwards for
  each candidate deposit (:mod:`~mixhouse.mixer.privacy.inversion`).

Why: a mix with one withdrawal address shows its whole total on that address, and the only
deposits it can hide among are those within the fee range of it; the range's two ends give
bands that overlap different deposits (measured in the README: the single-address attack's
linked share about halves). A re-plan is one transaction with the release: the deposit's
unreleased pieces are replaced, its fee and total updated, and audited
(``deposit.replanned``), before anything is signed.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Row, func, select, text

from mixhouse.audit import AuditEntry
from mixhouse.chains.base import FeeQuote, UtxoChainAdapter
from mixhouse.db.tables import deposits, mixes, sends
from mixhouse.errors import InvalidAmount
from mixhouse.jobs import send_job
from mixhouse.mixer.planner import Plan, candidate_totals, plan_payouts
from mixhouse.mixer.pooling import latest_release, payout_rows
from mixhouse.mixer.privacy.records import PublicDeposit
from mixhouse.mixer.privacy.rules import DenominatedRules
from mixhouse.mixer.privacy.score import release_set
from mixhouse.mixer.privacy.timing import TimingRules
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.states import DepositState, SendState, now
from mixhouse.money import Asset, asset_info
from mixhouse.unit import Unit, unit

log = structlog.get_logger(__name__)

REACHED = "anonymity set reached"
# At the fallback moment a total whose set is at least this has company: kept, or picked.
COMPANY = 2
MAX_WAIT = "maximum wait reached"


@dataclass(frozen=True, slots=True)
class GateDecision:
    """A release.

    Attributes:
        total: the payout total to release with, base units (the planned one or another
            candidate, which means a re-plan).
        anonymity_set: the release set of that total.
        reason: :data:`REACHED` or :data:`MAX_WAIT`.
    """

    total: int
    anonymity_set: int
    reason: str


def decide(
    planned: int,
    sizes: dict[int, int],
    *,
    k: int,
    fallback_reached: bool,
    rng: random.Random,
    deadline_reached: bool = True,
) -> GateDecision | None:
    """The gate's policy for one deposit (pure).

    Args:
        planned: the total planned at pooling, base units (a key of ``sizes``).
        sizes: each candidate total -> its release set.
        k: ``privacy_gate_k``.
        fallback_reached: whether the deposit's fallback moment (``deposits.release_by``) has come.
        rng: the random source for the picks.
        deadline_reached: whether the deposit's latest release moment
            (:func:`~mixhouse.mixer.pooling.latest_release`) has come. A deposit none of whose
            totals has company at its fallback moment waits for company until then.

    Returns:
        The release, or ``None`` to hold the deposit.

    Raises:
        KeyError: ``planned`` is not in ``sizes``.
    """
    current = sizes[planned]
    if current >= k:
        return GateDecision(planned, current, REACHED)
    if not fallback_reached:
        # Not re-planned for another total that reaches k before the fallback moment: a gate that
        # did so only ever released a thin total from a deposit none of whose totals reached k,
        # and an attacker ran that backwards, ruling out each rival deposit that had one
        # (``single+gate``: 1.1-1.4% linked on the realistic population, against 0.5-1.1% for
        # ``single``). Now any deposit whose drawn total has company may leave with it.
        return None
    if current >= COMPANY:
        return GateDecision(planned, current, MAX_WAIT)
    # Alone on the drawn total: uniform among the totals that reach k, else among those with
    # company. Not "the largest set": that choice can be recomputed for every candidate deposit
    # and rules out each one that had a larger set on another total (measured: with a 0.5-5%
    # range that linked more than any other attack; see mixhouse.mixer.privacy.inversion).
    for floor, reason in ((k, REACHED), (COMPANY, MAX_WAIT)):
        better = sorted(t for t, s in sizes.items() if s >= floor)
        if better:
            pick = rng.choice(better)
            return GateDecision(pick, sizes[pick], reason)
    # Alone on every total: released now, its address is linked by amount alone. Deposits that
    # arrive later (or leave the window) may still give it company, so it waits until its latest
    # release moment. The only deposits released at that public moment are the ones no total
    # could hide, which the amount links anyway.
    return GateDecision(planned, current, MAX_WAIT) if deadline_reached else None


_RELEASE_DEPOSITS_SQL = text(
    """
    UPDATE deposits d SET released_at = :at, anonymity_set = v.size, updated_at = :at
    FROM unnest(CAST(:ids AS bigint[]), CAST(:sizes AS integer[])) AS v(id, size)
    WHERE d.id = v.id AND d.released_at IS NULL
    """
)


def _public_deposits(recent: Sequence[Row[Any, Any, Any, Any]]) -> list[PublicDeposit]:
    # The public sees each deposit's amount at its arrival, and the network fees of the sweep and
    # the payouts on chain: the fee rules apply to what is left (on Jobcoin, the whole amount).
    public = [
        PublicDeposit(
            ref=str(r.id),
            address="",
            amount=int(r.amount) - int(r.network_fee_amount or 0),
            at=r.created_at.timestamp(),
        )
        for r in recent
    ]
    return sorted(public, key=lambda d: d.amount)


def _near(public: list[PublicDeposit], amounts: list[int], total: int, fee_max_bps: int) -> list[PublicDeposit]:
    """The deposits that might pay ``total``: amounts in ``[total, total / (1 - max fee)]``, plus
    one basis point and one base unit of slack for the rounding of the fee bounds (a deposit of
    ``P`` pays at least ``P - floor(P x max / 10^4)``). Not ``[total, 2 x total]``: in a burst
    of similar deposits that window held nearly all of them, and measuring was the round's
    largest cost (5-6 s of CPU per round at 1,000 pooled deposits)."""
    lo = bisect.bisect_left(amounts, total)
    hi = bisect.bisect_right(amounts, (total + 1) * 10_000 // max(1, 10_000 - fee_max_bps - 1) + 1)
    return public[lo:hi]


def _sizes(
    planned: int,
    totals: list[int],
    k: int,
    *,
    public: list[PublicDeposit],
    amounts: list[int],
    span: tuple[float, float],
    rules: DenominatedRules,
    timing: TimingRules,
    memo: dict[tuple[int, tuple[float, float], TimingRules], int],
) -> dict[int, int]:
    """Release sets of the planned total and, when it falls short of ``k``, of the others
    (measuring them is most of a round's work, and they do not matter once it reaches ``k``,
    which it always does with the gate off)."""

    def size_of(total: int) -> int:
        # One round measures against one list of public deposits: a total measured for another
        # deposit over the same span and timing rules has the same set (a burst of equal
        # deposits released together: 1,000 measurements of 1,000 deposits each become a few).
        key = (total, span, timing)
        if key not in memo:
            memo[key] = _measure(total)
        return memo[key]

    def _measure(total: int) -> int:
        return release_set(
            total,
            first_payout_at=span[0],
            last_payout_at=span[1],
            recent_deposits=_near(public, amounts, total, rules.fee_max_bps),
            rules=rules,
            timing=timing,
        )

    sizes = {planned: size_of(planned)}
    if sizes[planned] < k:
        sizes.update({t: size_of(t) for t in totals if t != planned})
    return sizes


async def release_gate(rt: Runtime, asset: Asset) -> tuple[int, int]:
    """Release the payouts of every waiting deposit of ``asset`` that :func:`decide` lets go,
    re-planning those it gives another total, in one transaction.

    Returns:
        ``(released, still_held)`` deposit counts.
    """
    moment = now()
    settings = rt.settings
    payout = (sends.c.deposit_id == deposits.c.id) & (sends.c.kind == "payout")
    async with rt.engine.connect() as conn:
        waiting = (
            await conn.execute(
                select(
                    deposits.c.id,
                    deposits.c.asset,
                    deposits.c.mix_id,
                    deposits.c.fee_amount,
                    deposits.c.network_fee_amount,
                    deposits.c.payout_total,
                    deposits.c.pooled_at,
                    deposits.c.created_at,
                    deposits.c.release_by,
                    mixes.c.fee_min_bps,
                    mixes.c.fee_max_bps,
                    mixes.c.withdrawal_addresses,
                    mixes.c.delay_min_seconds,
                    mixes.c.delay_max_seconds,
                    mixes.c.max_wait_seconds,
                    select(func.min(sends.c.due_at)).where(payout).scalar_subquery().label("first_due_at"),
                    select(func.max(sends.c.due_at)).where(payout).scalar_subquery().label("last_due_at"),
                    select(func.count()).where(payout).scalar_subquery().label("pieces"),
                    select(func.max(sends.c.network_fee_reserved)).where(payout).scalar_subquery().label("reserve"),
                )
                .join(mixes, mixes.c.id == deposits.c.mix_id)
                .where(
                    deposits.c.asset == asset.value,
                    deposits.c.state == DepositState.POOLED,
                    deposits.c.released_at.is_(None),
                    select(func.min(sends.c.due_at)).where(payout).scalar_subquery() <= moment,
                )
                .order_by(deposits.c.pooled_at)
            )
        ).all()
        if not waiting:
            return 0, 0
        longest = max(w.max_wait_seconds for w in waiting)
        recent = (
            await conn.execute(
                select(deposits.c.id, deposits.c.amount, deposits.c.network_fee_amount, deposits.c.created_at).where(
                    deposits.c.asset == asset.value,
                    deposits.c.state.in_([DepositState.SWEEPING, DepositState.POOLED]),
                    deposits.c.created_at >= moment - timedelta(seconds=longest),
                )
            )
        ).all()
    release_by = await _fallback_moments(rt, waiting)
    public = _public_deposits(recent)
    amounts = [d.amount for d in public]
    dust = asset_info(asset).dust
    rules = DenominatedRules(settings.fee_min_bps, settings.fee_max_bps, min_payout=dust)
    decisions: list[tuple[Any, GateDecision, int]] = []
    held = 0
    memo: dict[tuple[int, tuple[float, float], TimingRules], int] = {}
    for dep in waiting:
        planned = int(dep.payout_total)
        # The secret fallback moment, drawn inside the window: never later than the maximum
        # wait (see latest_release), never the documented deadline itself.
        due = moment >= release_by[dep.id]
        last = moment >= latest_release(dep.created_at, dep.max_wait_seconds, settings.payout_round_seconds)
        totals: list[int] = []
        if due:
            pooled, reserve = _pooled(dep)
            totals = candidate_totals(
                pooled, dep.fee_min_bps, dep.fee_max_bps, network_fee=int(dep.pieces) * reserve, min_payout=dust
            )
        # The attacker will see this mix's payouts from now until its last piece falls due.
        # Before the fallback moment only the drawn total matters (decide), so only it is measured.
        sizes = _sizes(
            planned,
            totals,
            settings.privacy_gate_k,
            public=public,
            amounts=amounts,
            span=(moment.timestamp(), max(moment, dep.last_due_at).timestamp()),
            rules=rules,
            timing=TimingRules(dep.delay_min_seconds, dep.max_wait_seconds),
            memo=memo,
        )
        decision = decide(
            planned, sizes, k=settings.privacy_gate_k, fallback_reached=due, rng=rt.rng, deadline_reached=last
        )
        if decision is None:
            held += 1
        else:
            decisions.append((dep, decision, sizes[planned]))
    if not decisions:
        return 0, held
    utxo = isinstance(rt.adapter(asset), UtxoChainAdapter)
    async with unit(rt.engine) as work:
        final: list[tuple[Any, GateDecision]] = []
        for dep, decision, planned_size in decisions:
            kept = decision.total == int(dep.payout_total) or not await _replan(rt, work, dep, decision, moment)
            final.append(
                (dep, GateDecision(int(dep.payout_total), planned_size, decision.reason) if kept else decision)
            )
        released_ids = [dep.id for dep, _ in final]
        sizes_out = [decision.anonymity_set for _, decision in final]
        # Two statements for the whole round, not two per deposit.
        await work.conn.execute(_RELEASE_DEPOSITS_SQL, {"ids": released_ids, "sizes": sizes_out, "at": moment})
        released = (
            await work.conn.execute(
                sends.update()
                .where(sends.c.deposit_id.in_(released_ids), sends.c.kind == "payout", sends.c.released_at.is_(None))
                .values(released_at=moment)
                .returning(sends.c.id, sends.c.deposit_id, sends.c.due_at)
            )
        ).all()
        per_deposit: dict[int, int] = {}
        for send_id, deposit_id, due_at in sorted(released):
            per_deposit[deposit_id] = per_deposit.get(deposit_id, 0) + 1
            if utxo:
                work.defer(send_job(send_id, due_at))
        for dep, decision in final:
            work.audit(
                AuditEntry(
                    "deposit.released",
                    "deposit",
                    str(dep.id),
                    asset=asset.value,
                    details={
                        "mix_id": dep.mix_id,
                        "anonymity_set": decision.anonymity_set,
                        "reason": decision.reason,
                        "payouts": per_deposit.get(dep.id, 0),
                    },
                )
            )
    return len(decisions), held


async def _fallback_moments(rt: Runtime, waiting: Sequence[Any]) -> dict[int, datetime]:
    """Each waiting deposit's fallback moment (``deposits.release_by``), drawing and storing
    it for the deposits seen for the first time.

    The draw is uniform between the deposit's first due payout and its latest release moment
    (:func:`~mixhouse.mixer.pooling.latest_release`), from ``rt.rng``. Waiting for the latest
    moment itself would release every thin deposit at ``arrival + max_wait``, which anyone can
    compute from the public deposit and the documented maximum wait
    (:mod:`mixhouse.mixer.privacy.deadline`: 22% of a quiet hour's addresses linked by that
    moment alone); a moment drawn over the whole window says nothing the window does not. A
    draw over only the later half was measured too: it leaves a band of half the window, and
    on issue 13's populations it linked more (realistic 1.24% against 1.03%, quiet 5.9%
    against 4.3%, mean of 7 seeds in a model of the engine).
    Rounds of one asset are serialised (``mixer/rounds.py``), so no other gate draws for the
    same deposit meanwhile; the ``IS NULL`` guard keeps a stored draw if one is there anyway.

    Returns:
        deposit id -> its fallback moment.
    """
    known = {dep.id: dep.release_by for dep in waiting if dep.release_by is not None}
    fresh: dict[int, datetime] = {}
    for dep in waiting:
        if dep.release_by is not None:
            continue
        latest = latest_release(dep.created_at, dep.max_wait_seconds, rt.settings.payout_round_seconds)
        earliest = min(dep.first_due_at, latest)
        span = (latest - earliest).total_seconds()
        fresh[dep.id] = earliest + timedelta(seconds=rt.rng.uniform(0.0, span))
    if fresh:
        async with rt.engine.begin() as conn:
            stored = await conn.execute(_STORE_RELEASE_BY_SQL, {"ids": list(fresh), "moments": list(fresh.values())})
            known.update({row.id: row.release_by for row in stored})
            missing = [i for i in fresh if i not in known]
            if missing:  # drawn meanwhile by another round after all: the stored one counts
                rows = await conn.execute(
                    select(deposits.c.id, deposits.c.release_by).where(deposits.c.id.in_(missing))
                )
                known.update({row.id: row.release_by for row in rows})
    return known


_STORE_RELEASE_BY_SQL = text(
    """
    UPDATE deposits d SET release_by = v.at
    FROM unnest(CAST(:ids AS bigint[]), CAST(:moments AS timestamptz[])) AS v(id, at)
    WHERE d.id = v.id AND d.release_by IS NULL
    RETURNING d.id, d.release_by
    """
)


def _pooled(dep: Any) -> tuple[int, int]:  # a row of release_gate's waiting query
    """``(pooled amount, network fee reserved per piece)`` of a waiting deposit, base units:
    what its plan split into fee, network fees and payout total."""
    reserve = int(dep.reserve or 0)
    return int(dep.fee_amount) + int(dep.payout_total) + int(dep.pieces) * reserve, reserve


async def _replan(rt: Runtime, work: Unit, dep: Row[Any], decision: GateDecision, moment: datetime) -> bool:
    """Replace ``dep``'s unreleased pieces by a plan for ``decision.total``, in ``work``;
    ``False`` (nothing changed) when that total cannot be planned after all."""
    pooled, reserve = _pooled(dep)
    try:
        plan: Plan = plan_payouts(
            pooled=pooled,
            fee_min_bps=dep.fee_min_bps,
            fee_max_bps=dep.fee_max_bps,
            withdrawal_addresses=list(dep.withdrawal_addresses),
            network_fee_per_payout=reserve,
            min_payout=asset_info(dep.asset).dust,
            delay_min_seconds=dep.delay_min_seconds,
            delay_max_seconds=dep.delay_max_seconds,
            rng=rt.rng,
            total=decision.total,
        )
    except InvalidAmount:
        log.warning("gate kept the planned total", deposit_id=dep.id, reason="candidate total not plannable")
        return False
    savepoint = await work.conn.begin_nested()
    removed = (
        await work.conn.execute(
            sends.delete()
            .where(
                sends.c.deposit_id == dep.id,
                sends.c.kind == "payout",
                sends.c.state == SendState.SCHEDULED,
                sends.c.released_at.is_(None),
            )
            .returning(sends.c.id)
        )
    ).all()
    if len(removed) != int(dep.pieces):
        # Another path touched a piece meanwhile: keep the plan as it was.
        await savepoint.rollback()
        log.warning("gate kept the planned total", deposit_id=dep.id, reason="pieces changed meanwhile")
        return False
    quote = FeeQuote(per_send=reserve, detail="as planned")
    await work.conn.execute(
        sends.insert().values(payout_rows(rt, dep, dep, plan, quote=quote, pooled_at=dep.pooled_at))
    )
    sweep_fee = int(dep.network_fee_amount or 0) - int(dep.pieces) * reserve
    await work.conn.execute(
        deposits.update()
        .where(deposits.c.id == dep.id, deposits.c.released_at.is_(None))
        .values(
            fee_amount=plan.fee,
            payout_total=plan.payout_total,
            network_fee_amount=sweep_fee + plan.network_fee,
            updated_at=moment,
        )
    )
    await savepoint.commit()
    work.audit(
        AuditEntry(
            "deposit.replanned",
            "deposit",
            str(dep.id),
            asset=dep.asset,
            details={
                "mix_id": dep.mix_id,
                "payout_total": str(plan.payout_total),
                "previous_payout_total": str(dep.payout_total),
                "fee": str(plan.fee),
                "payouts": len(plan.payouts),
                "anonymity_set": decision.anonymity_set,
            },
        )
    )
    return True
