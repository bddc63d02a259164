"""The privacy report of the live pool: the analyzer run over what the public has seen.

The only module of :mod:`mixhouse.mixer.privacy` that does I/O, and a thin one:
:func:`read_live_pool` reads one asset's pool from the database as the public ledger shows it
(plus the links only the operator knows, to score the attacks), :func:`analyze_live` runs the
pure :func:`~mixhouse.mixer.privacy.analyzer.analyze` and
:func:`~mixhouse.mixer.privacy.score.score` on it, :func:`read_gate` sums up the release gate,
and :func:`privacy_report` does all three (the analysis in a thread, off the event loop).

What the public sees, and so what the view holds:

* deposits that reached the pool (state ``sweeping`` or ``pooled``), each as its amount minus
  the network fee of its sweep (what the fee rules apply to, as in the release gate) at the
  time Mixhouse saw it (``deposits.created_at``);
* confirmed payouts: recipient, amount, ``sends.confirmed_at``.

Units: amounts are int base units, times float seconds (POSIX), percentages floats.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Text, and_, cast, func, or_, select

from mixhouse.db.tables import audit_log, deposits, mixes, sends
from mixhouse.errors import InvalidInput
from mixhouse.mixer.privacy.analyzer import Report, analyze
from mixhouse.mixer.privacy.records import PublicDeposit, PublicPayout, PublicView
from mixhouse.mixer.privacy.rules import DenominatedRules
from mixhouse.mixer.privacy.score import Score, percentile, score
from mixhouse.mixer.privacy.timing import TimingRules
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.states import DepositState, SendState, now
from mixhouse.money import Asset, asset_info

# The newest payouts analysed at most. The three amount attacks cost up to the analyzer's work
# cap (20,000 units) per deposit each: measured on this 2-core machine, a simulated pool of 500
# deposits and 3,676 payouts took 77 s (28 + 26 + 22 s for the amount attacks, under 1 s for the
# others), so 5,000 payouts bound a report to a minute or two of one core. A larger range is
# analysed from its newest payouts back; the report says so.
MAX_PAYOUTS = 5_000
# The largest group of withdrawal addresses the amount search tries, whatever
# ``max_withdrawal_addresses`` allows (up to 50): the search's work grows with the group size,
# and 10 (the default limit) already makes most dense deposits hit the analyzer's work cap.
# With a higher limit the report understates what a patient attacker could find.
MAX_ANALYSED_ADDRESSES = 10
# Range of ``hours`` a report may cover (30 days at most).
MIN_HOURS, MAX_HOURS = 1, 720

REASON_K = "anonymity set reached"
REASON_MAX_WAIT = "maximum wait reached"
_IN_POOL = (DepositState.SWEEPING, DepositState.POOLED)
# One analysis at a time per process: concurrent reports queue here instead of taking every core.
_ANALYSIS = threading.Lock()


@dataclass(frozen=True, slots=True)
class LivePool:
    """One asset's pool as the public sees it over a time range, and the operator's truth.

    Attributes:
        asset: the asset.
        hours: the length of the range, hours.
        since, until: the range of payout confirmation times asked for (UTC).
        view: the public view: the analysed payouts, and every pooled deposit that could have
            paid them (created from ``max_wait_seconds`` plus a round before the oldest
            analysed payout, to ``until``) plus the deposits that really did.
        truth: withdrawal address -> ref (``str(deposits.id)``) of the deposit that paid it;
            addresses paid by more than one deposit are left out (see ``shared_addresses``).
        rules: the documented fee rules (``settings.fee_*_bps``, the asset's dust).
        timing: the documented timing: the smallest ``delay_min_seconds`` and the largest
            ``max_wait_seconds`` of the view's mixes (0 and the default maximum wait when
            there are none), ``max_addresses`` capped at :data:`MAX_ANALYSED_ADDRESSES`,
            ``round_seconds`` = ``settings.payout_round_seconds``.
        payouts_in_range: confirmed payouts in the range.
        payout_limit: the most payouts analysed (the newest ones).
        shared_addresses: withdrawal addresses paid by two or more deposits (not scored).
    """

    asset: Asset
    hours: int
    since: datetime
    until: datetime
    view: PublicView
    truth: dict[str, str]
    rules: DenominatedRules
    timing: TimingRules
    payouts_in_range: int
    payout_limit: int
    shared_addresses: int

    @property
    def payouts_capped(self) -> bool:
        """Whether only the newest :attr:`payout_limit` payouts of the range were analysed."""
        return self.payouts_in_range > len(self.view.payouts)


@dataclass(frozen=True, slots=True)
class GateFigures:
    """The release gate over a time range, and now.

    Attributes:
        k: ``settings.privacy_gate_k`` (1: the gate is off).
        released: deposits whose payouts the gate released in the range.
        released_by_k: of those, released because their anonymity set reached ``k`` (the
            reason recorded in the ``deposit.released`` audit entry).
        released_by_max_wait: released because their mix's maximum wait was reached.
        set_p10, set_p50, set_p90: nearest-rank percentiles of ``deposits.anonymity_set`` of
            the released deposits (deposits, this one included; 0 when none were released).
        waiting: pooled deposits whose first payout is due and that the gate holds now.
        oldest_wait_seconds: how long the longest-held of them has been pooled, seconds
            (0.0 when none is held).
        not_yet_due: pooled deposits not released whose first payout is not due yet.
    """

    k: int
    released: int
    released_by_k: int
    released_by_max_wait: int
    set_p10: int
    set_p50: int
    set_p90: int
    waiting: int
    oldest_wait_seconds: float
    not_yet_due: int


@dataclass(frozen=True, slots=True)
class LiveReport:
    """:func:`privacy_report`'s result.

    Attributes:
        pool: what was analysed.
        report: the analyzer's report (every attack of
            :data:`~mixhouse.mixer.privacy.analyzer.ATTACKS`).
        score: the attacks scored against ``pool.truth``.
        gate: the release gate's figures over the same range.
        analysis_seconds: wall time of ``analyze`` plus ``score``, seconds.
    """

    pool: LivePool
    report: Report
    score: Score
    gate: GateFigures
    analysis_seconds: float


def check_hours(hours: int) -> None:
    """Raise :class:`~mixhouse.errors.InvalidInput` unless ``MIN_HOURS <= hours <= MAX_HOURS``."""
    if not MIN_HOURS <= hours <= MAX_HOURS:
        raise InvalidInput(f"hours must be {MIN_HOURS}..{MAX_HOURS}, got {hours}")


def _public_deposit(row: Any) -> PublicDeposit:
    return PublicDeposit(
        ref=str(row.id),
        address=row.deposit_address,
        amount=int(row.amount) - int(row.network_fee_amount or 0),
        at=row.created_at.timestamp(),
    )


async def read_live_pool(
    rt: Runtime,
    asset: Asset | str,
    *,
    hours: int = 24,
    until: datetime | None = None,
    payout_limit: int = MAX_PAYOUTS,
) -> LivePool:
    """Read the public view of ``asset``'s pool and the truth behind it.

    Args:
        rt: the runtime (its engine, settings and the asset's adapter for the pool address).
        asset: an enabled asset.
        hours: the range, ``until - hours`` to ``until``, of payout confirmation times.
        until: the end of the range (default now).
        payout_limit: the most payouts read, newest first (at least 1).

    Returns:
        The :class:`LivePool`.

    Raises:
        InvalidInput: the asset is unknown or not enabled, or ``hours`` is outside
            ``MIN_HOURS..MAX_HOURS``.
    """
    check_hours(hours)
    adapter = rt.adapter(asset)
    which = Asset(asset)
    settings = rt.settings
    end = until or now()
    start = end - timedelta(hours=hours)
    confirmed_in_range = and_(
        sends.c.asset == which.value,
        sends.c.kind == "payout",
        sends.c.state == SendState.CONFIRMED,
        sends.c.confirmed_at >= start,
        sends.c.confirmed_at <= end,
    )
    async with rt.engine.connect() as conn:
        in_range = int(
            (await conn.execute(select(func.count()).select_from(sends).where(confirmed_in_range))).scalar_one()
        )
        payout_rows = (
            await conn.execute(
                select(sends.c.id, sends.c.deposit_id, sends.c.to_address, sends.c.amount, sends.c.confirmed_at)
                .where(confirmed_in_range)
                .order_by(sends.c.confirmed_at.desc(), sends.c.id.desc())
                .limit(max(1, payout_limit))
            )
        ).all()
        oldest = min((r.confirmed_at for r in payout_rows), default=start)
        paying = sorted({int(r.deposit_id) for r in payout_rows})
        default_wait = settings.default_delay_max_seconds + settings.privacy_max_extra_wait_seconds
        longest = (
            await conn.execute(
                select(func.max(mixes.c.max_wait_seconds))
                .select_from(deposits.join(mixes, mixes.c.id == deposits.c.mix_id))
                .where(
                    deposits.c.asset == which.value,
                    or_(
                        deposits.c.id.in_(paying),
                        and_(
                            deposits.c.state.in_(_IN_POOL),
                            deposits.c.created_at >= oldest,
                            deposits.c.created_at <= end,
                        ),
                    ),
                )
            )
        ).scalar_one()
        lookback = timedelta(seconds=int(longest if longest is not None else default_wait))
        lookback += timedelta(seconds=settings.payout_round_seconds)
        deposit_rows = (
            await conn.execute(
                select(
                    deposits.c.id,
                    deposits.c.deposit_address,
                    deposits.c.amount,
                    deposits.c.network_fee_amount,
                    deposits.c.created_at,
                    mixes.c.delay_min_seconds,
                    mixes.c.max_wait_seconds,
                )
                .join(mixes, mixes.c.id == deposits.c.mix_id)
                .where(
                    deposits.c.asset == which.value,
                    or_(
                        deposits.c.id.in_(paying),
                        and_(
                            deposits.c.state.in_(_IN_POOL),
                            deposits.c.created_at >= oldest - lookback,
                            deposits.c.created_at <= end,
                        ),
                    ),
                )
            )
        ).all()
    public_deposits = sorted((_public_deposit(r) for r in deposit_rows), key=lambda d: (d.at, int(d.ref)))
    public_payouts = sorted(
        (PublicPayout(str(r.id), r.to_address, int(r.amount), r.confirmed_at.timestamp()) for r in payout_rows),
        key=lambda p: (p.at, int(p.ref)),
    )
    paid_by: dict[str, set[str]] = {}
    for r in payout_rows:
        paid_by.setdefault(r.to_address, set()).add(str(r.deposit_id))
    truth = {address: next(iter(refs)) for address, refs in paid_by.items() if len(refs) == 1}
    timing = TimingRules(
        delay_min_seconds=min((r.delay_min_seconds for r in deposit_rows), default=0),
        max_wait_seconds=max((r.max_wait_seconds for r in deposit_rows), default=default_wait),
        max_addresses=min(settings.max_withdrawal_addresses, MAX_ANALYSED_ADDRESSES),
        round_seconds=settings.payout_round_seconds,
        gate_k=settings.privacy_gate_k,
    )
    return LivePool(
        asset=which,
        hours=hours,
        since=start,
        until=end,
        view=PublicView(tuple(public_deposits), tuple(public_payouts), adapter.pool_address),
        truth=truth,
        rules=DenominatedRules(settings.fee_min_bps, settings.fee_max_bps, min_payout=asset_info(which).dust),
        timing=timing,
        payouts_in_range=in_range,
        payout_limit=payout_limit,
        shared_addresses=len(paid_by) - len(truth),
    )


def analyze_live(pool: LivePool) -> tuple[Report, Score, float]:
    """Run every attack on ``pool.view`` with its documented rules and score them. Pure but
    for a process-wide lock (one analysis at a time); CPU bound (up to a minute or two at
    :data:`MAX_PAYOUTS` payouts): call it in a thread from async code.

    Returns:
        ``(report, score, seconds)``: the analyzer's report, its score against ``pool.truth``,
        and the wall time of both (not counting the wait for the lock), seconds.
    """
    with _ANALYSIS:
        started = time.perf_counter()
        report = analyze(pool.view, pool.rules, pool.timing)
        scored = score(report, pool.truth)
        return report, scored, time.perf_counter() - started


async def read_gate(rt: Runtime, asset: Asset | str, *, since: datetime, until: datetime) -> GateFigures:
    """The release gate's figures of ``asset``: the deposits released in ``[since, until]``
    (their measured anonymity sets, and why each was released) and the deposits held now.

    A release's reason is the ``details.reason`` of its ``deposit.released`` audit entry; a
    deposit without one (not expected) counts by ``anonymity_set >= privacy_gate_k``.

    Raises:
        InvalidInput: the asset is unknown.
    """
    try:
        which = Asset(asset)
    except ValueError:
        raise InvalidInput(f"unknown asset {asset!r}") from None
    k = rt.settings.privacy_gate_k
    moment = now()
    first_due = (
        select(func.min(sends.c.due_at))
        .where(sends.c.deposit_id == deposits.c.id, sends.c.kind == "payout")
        .scalar_subquery()
    )
    async with rt.engine.connect() as conn:
        released = (
            await conn.execute(
                select(deposits.c.anonymity_set, audit_log.c.details["reason"].astext.label("reason"))
                .select_from(
                    deposits.outerjoin(
                        audit_log,
                        and_(
                            audit_log.c.entity_type == "deposit",
                            audit_log.c.entity_id == cast(deposits.c.id, Text),
                            audit_log.c.action == "deposit.released",
                        ),
                    )
                )
                .where(
                    deposits.c.asset == which.value,
                    deposits.c.released_at >= since,
                    deposits.c.released_at <= until,
                )
            )
        ).all()
        unreleased = (
            await conn.execute(
                select(deposits.c.pooled_at, first_due.label("first_due")).where(
                    deposits.c.asset == which.value,
                    deposits.c.state == DepositState.POOLED,
                    deposits.c.released_at.is_(None),
                )
            )
        ).all()
    sizes = [int(r.anonymity_set or 0) for r in released]
    by_k = sum(1 for r in released if r.reason == REASON_K or (r.reason is None and int(r.anonymity_set or 0) >= k))
    held = [r for r in unreleased if r.first_due is not None and r.first_due <= moment]
    oldest = min((r.pooled_at for r in held if r.pooled_at is not None), default=None)
    return GateFigures(
        k=k,
        released=len(released),
        released_by_k=by_k,
        released_by_max_wait=len(released) - by_k,
        set_p10=percentile(sizes, 0.10),
        set_p50=percentile(sizes, 0.50),
        set_p90=percentile(sizes, 0.90),
        waiting=len(held),
        oldest_wait_seconds=max(0.0, (moment - oldest).total_seconds()) if oldest is not None else 0.0,
        not_yet_due=len(unreleased) - len(held),
    )


async def privacy_report(
    rt: Runtime,
    asset: Asset | str,
    *,
    hours: int = 24,
    until: datetime | None = None,
    payout_limit: int = MAX_PAYOUTS,
) -> LiveReport:
    """The privacy report of ``asset``'s pool over the last ``hours`` hours (to ``until``,
    default now): read the pool, analyse it in a worker thread (:func:`asyncio.to_thread`, so
    the event loop keeps serving), score it, and read the gate's figures over the same range.

    Raises:
        InvalidInput: the asset is unknown or not enabled, or ``hours`` is outside 1..720.
    """
    pool = await read_live_pool(rt, asset, hours=hours, until=until, payout_limit=payout_limit)
    report, scored, seconds = await asyncio.to_thread(analyze_live, pool)
    gate = await read_gate(rt, pool.asset, since=pool.since, until=pool.until)
    return LiveReport(pool=pool, report=report, score=scored, gate=gate, analysis_seconds=seconds)
