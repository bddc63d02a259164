"""The release gate (``mixhouse.mixer.gate``): its policy as a pure function, and a re-plan on a
real PostgreSQL and the local Jobcoin ledger, from deposit to confirmed payouts."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.app.build import build_runtime
from mixhouse.chains.jobcoin import ledger
from mixhouse.db.tables import audit_log, deposits, sends
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.gate import MAX_WAIT, REACHED, decide
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.planner import candidate_totals, fee_bounds, is_series_value, plan_payouts
from mixhouse.mixer.rounds import run_round
from mixhouse.mixer.sends import execute_send
from mixhouse.money import Asset
from tests.e2e import fast_settings, local_ledger

COIN = 10**8


def test_the_planned_total_goes_when_its_set_is_large_enough() -> None:
    d = decide(98, {97: 9, 98: 5, 99: 1}, k=5, fallback_reached=False, rng=random.Random(1))
    assert d is not None
    assert (d.total, d.anonymity_set, d.reason) == (98, 5, REACHED)


def test_a_thin_drawn_total_is_held_until_the_fallback_even_when_another_reaches_k() -> None:
    sizes = {97: 6, 98: 5, 99: 1, 100: 4}
    # Re-planning early would tell an attacker that a deposit released thin had no total
    # reaching k (the single+gate inversion).
    assert decide(99, sizes, k=5, fallback_reached=False, rng=random.Random(0)) is None
    assert decide(100, sizes, k=5, fallback_reached=False, rng=random.Random(0)) is None
    kept = decide(100, sizes, k=5, fallback_reached=True, rng=random.Random(0))
    assert kept is not None
    assert (kept.total, kept.reason) == (100, MAX_WAIT), "a drawn total with company is kept"


def test_a_lone_drawn_total_takes_one_that_reaches_k_uniformly_at_the_fallback() -> None:
    picks: Counter[int] = Counter()
    for seed in range(400):
        d = decide(99, {97: 6, 98: 5, 99: 1, 100: 4}, k=5, fallback_reached=True, rng=random.Random(seed))
        assert d is not None
        assert d.reason == REACHED
        assert d.anonymity_set >= 5
        picks[d.total] += 1
    # Uniform among the totals that reach k, not the largest set: the pick says nothing more.
    assert set(picks) == {97, 98}
    assert min(picks.values()) > 150


def test_held_until_the_fallback_then_a_total_with_company() -> None:
    sizes = {97: 3, 98: 1, 99: 2, 100: 1}
    assert decide(98, sizes, k=5, fallback_reached=False, rng=random.Random(0)) is None
    picks: Counter[int] = Counter()
    for seed in range(400):
        d = decide(98, sizes, k=5, fallback_reached=True, rng=random.Random(seed))
        assert d is not None
        assert d.reason == MAX_WAIT
        picks[d.total] += 1
    # Uniform among the totals with a set of 2 or more, not the largest: the largest could be
    # recomputed for every candidate deposit and rule the others out.
    assert set(picks) == {97, 99}
    assert min(picks.values()) > 150
    kept = decide(97, {97: 2, 98: 4}, k=5, fallback_reached=True, rng=random.Random(0))
    assert kept is not None
    assert (kept.total, kept.reason) == (97, MAX_WAIT), "a drawn total with company is kept"
    alone = {97: 1, 98: 1}
    assert decide(97, alone, k=5, fallback_reached=True, deadline_reached=False, rng=random.Random(0)) is None, (
        "no company anywhere at the fallback moment: it waits for some until its latest release"
    )
    lone = decide(97, alone, k=5, fallback_reached=True, deadline_reached=True, rng=random.Random(0))
    assert lone is not None
    assert (lone.total, lone.reason) == (97, MAX_WAIT), "no company by the latest release: as drawn"
    late = decide(97, {97: 1, 98: 2}, k=5, fallback_reached=True, deadline_reached=False, rng=random.Random(0))
    assert late is not None
    assert late.total == 98, "company arrived before the latest release: released with it"


@given(pooled=st.integers(min_value=COIN, max_value=10**6 * COIN), seed=st.integers(0, 2**32))
def test_every_candidate_total_can_be_planned_inside_the_fee_range(pooled: int, seed: int) -> None:
    totals = candidate_totals(pooled, 100, 300, min_payout=1000)
    assert 2 <= len(totals) <= 21
    low, high = fee_bounds(pooled, 100, 300)
    for total in totals:
        plan = plan_payouts(
            pooled=pooled,
            fee_min_bps=100,
            fee_max_bps=300,
            withdrawal_addresses=["a", "b"],
            network_fee_per_payout=0,
            min_payout=1000,
            delay_min_seconds=0,
            delay_max_seconds=10,
            rng=random.Random(seed),
            total=total,
        )
        assert plan.payout_total == total == sum(p.amount for p in plan.payouts)
        assert low <= plan.fee <= high
        assert plan.fee + total == pooled
        assert all(is_series_value(p.amount, plan.quantum) for p in plan.payouts)


@pytest.mark.parametrize("k", [2, 9])
async def test_a_lone_total_is_replanned_to_one_that_hides_it(database_url: str, engine: AsyncEngine, k: int) -> None:
    """A deposit of 100 JC and one of 98.5: their fee ranges overlap only at a total of 97 JC.
    With k = 2 the gate re-plans both to it at once; with k = 9 (never reached) at their
    maximum wait. Either way every piece is paid exactly once and sums to the new total."""
    async with local_ledger(engine) as led:
        settings = fast_settings(
            database_url, jobcoin_api_url=led.api_url, privacy_gate_k=k, privacy_max_extra_wait_seconds=6
        )
        rt = build_runtime(settings, database_url)
        rt.rng = random.Random(7)
        try:
            users = [(["lone-1"], 100 * COIN), (["other-1", "other-2"], 98 * COIN + 50_000_000)]
            for addresses, amount in users:
                mix = await create_mix(rt, MixRequest("JOBCOIN", addresses, 0, 0))
                await ledger.mint(engine, f"sender-{addresses[0]}", amount)
                await ledger.transfer(engine, f"sender-{addresses[0]}", mix["deposit_address"], amount)
            await scan_asset(rt, Asset.JOBCOIN)
            async with engine.connect() as conn:
                sweeps = (await conn.execute(select(sends.c.id).where(sends.c.kind == "sweep"))).scalars().all()
            for sweep_id in sweeps:
                assert await execute_send(rt, sweep_id) == "confirmed"
            async with engine.connect() as conn:
                planned = dict((await conn.execute(select(deposits.c.amount, deposits.c.payout_total))).all())
            assert len(planned) == 2
            for _ in range(200):
                await run_round(rt, Asset.JOBCOIN)
                async with engine.connect() as conn:
                    left = (
                        await conn.execute(
                            select(func.count()).where(sends.c.kind == "payout", sends.c.state != "confirmed")
                        )
                    ).scalar_one()
                    released = (
                        await conn.execute(select(func.count()).where(deposits.c.released_at.is_not(None)))
                    ).scalar_one()
                if left == 0 and released == 2:
                    break
                await _tick()
            else:
                raise AssertionError("payouts did not all confirm")
            async with engine.connect() as conn:
                deps = (await conn.execute(select(deposits))).all()
                pays = (await conn.execute(select(sends).where(sends.c.kind == "payout"))).all()
                replanned = (
                    (await conn.execute(select(audit_log.c.entity_id).where(audit_log.c.action == "deposit.replanned")))
                    .scalars()
                    .all()
                )
                public = await ledger.all_transfers(conn)
            for dep in deps:
                assert int(dep.payout_total) == 97 * COIN, "the only total both deposits could have paid"
                assert dep.anonymity_set == 2
                low, high = fee_bounds(int(dep.amount), 100, 300)
                assert low <= int(dep.fee_amount) <= high
                assert int(dep.fee_amount) + int(dep.payout_total) == int(dep.amount)
                mine = [p for p in pays if p.deposit_id == dep.id]
                assert sum(int(p.amount) for p in mine) == 97 * COIN
                assert all(p.state == "confirmed" and p.attempts == 1 for p in mine)
            # Each re-planned deposit is audited; a deposit whose draw was already 97 is not.
            assert sorted(replanned) == sorted(str(d.id) for d in deps if int(planned[d.amount]) != 97 * COIN)
            # The public ledger shows exactly the new pieces, once each.
            pool = rt.adapter("JOBCOIN").pool_address
            assert Counter((t.to_address, t.amount) for t in public if t.from_address == pool) == Counter(
                (p.to_address, int(p.amount)) for p in pays
            )
        finally:
            await rt.aclose()
            await rt.engine.dispose()


async def test_a_thin_deposit_leaves_at_a_drawn_moment_not_at_its_deadline(
    database_url: str, engine: AsyncEngine
) -> None:
    """With ``k`` out of reach, each deposit goes at its own secret fallback moment
    (``deposits.release_by``), drawn once between its first due payout and its latest release
    moment - not all at ``arrival + max_wait``, which anyone can compute."""
    async with local_ledger(engine) as led:
        settings = fast_settings(
            database_url, jobcoin_api_url=led.api_url, privacy_gate_k=50, privacy_max_extra_wait_seconds=600
        )
        rt = build_runtime(settings, database_url)
        rt.rng = random.Random(3)
        try:
            for i in range(8):
                mix = await create_mix(rt, MixRequest("JOBCOIN", [f"thin-{i}"], 0, 0))
                await ledger.mint(engine, f"sender-{i}", (20 + i) * COIN)
                await ledger.transfer(engine, f"sender-{i}", mix["deposit_address"], (20 + i) * COIN)
            await scan_asset(rt, Asset.JOBCOIN)
            async with engine.connect() as conn:
                sweeps = (await conn.execute(select(sends.c.id).where(sends.c.kind == "sweep"))).scalars().all()
            for sweep_id in sweeps:
                assert await execute_send(rt, sweep_id) == "confirmed"
            await run_round(rt, Asset.JOBCOIN)
            async with engine.connect() as conn:
                first = dict((await conn.execute(select(deposits.c.id, deposits.c.release_by))).all())
                created = dict((await conn.execute(select(deposits.c.id, deposits.c.created_at))).all())
            assert len(first) == 8
            assert all(at is not None for at in first.values()), "drawn the first time the gate sees them"
            offsets = sorted((first[i] - created[i]).total_seconds() for i in first)
            # Inside [first due (delay 0), latest release (600 s less its margin)], and spread out.
            assert offsets[0] >= 0
            assert offsets[-1] <= 600
            assert offsets[-1] - offsets[0] > 60, offsets
            await run_round(rt, Asset.JOBCOIN)
            async with engine.connect() as conn:
                again = dict((await conn.execute(select(deposits.c.id, deposits.c.release_by))).all())
                released = dict((await conn.execute(select(deposits.c.id, deposits.c.released_at))).all())
            assert again == first, "drawn once, never redrawn"
            for i, at in released.items():
                # Below k: held until the fallback moment, released at the first round after it.
                assert at is None or at >= first[i]
            assert sum(1 for at in released.values() if at is None) >= 6
        finally:
            await rt.aclose()
            await rt.engine.dispose()


async def _tick() -> None:
    # A round only releases what is due by the clock (the mix's maximum wait is 6 s here).
    await asyncio.sleep(0.1)
