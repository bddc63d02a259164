"""End to end on the local Jobcoin ledger over real HTTP, with a real worker and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.app.build import build_runtime
from mixhouse.app.worker import run_worker
from mixhouse.chains.jobcoin import ledger
from mixhouse.db.tables import audit_log, deposits, sends
from mixhouse.mixer.deposits import confirm_deposits, scan_asset
from mixhouse.mixer.mixes import MixRequest, create_mix, expire_mixes, get_mix
from mixhouse.mixer.planner import fee_bounds, is_series_value
from mixhouse.mixer.reconcile import reconcile
from mixhouse.mixer.screening import store_list
from mixhouse.money import Asset, parse_amount
from mixhouse.servers import background
from tests.e2e import fast_settings, local_ledger, wait_for_payouts
from tests.scanning import engine_scan

COIN = 10**8


async def test_mix_end_to_end_on_the_ledger(database_url: str, engine: AsyncEngine) -> None:
    async with local_ledger(engine) as led:
        rt = build_runtime(fast_settings(database_url, jobcoin_api_url=led.api_url), database_url)
        rt.rng = random.Random(7)
        try:
            await ledger.mint(engine, "sender", 50 * COIN)
            mix = await create_mix(rt, MixRequest("JOBCOIN", ["w-alice", "w-bob", "w-carol"], 0, 3))
            await ledger.transfer(engine, "sender", mix["deposit_address"], 50 * COIN)
            async with background(run_worker(rt, database_url, concurrency=4)):
                view = await wait_for_payouts(rt, mix["id"], within=60)
            dep = view["deposits"][0]
            assert dep["state"] == "pooled"
            assert dep["amount"] == 50 * COIN
            low, high = fee_bounds(50 * COIN, mix["fee_min_bps"], mix["fee_max_bps"])
            assert low <= dep["fee_amount"] <= high
            payouts = [s for s in view["sends"] if s["kind"] == "payout"]
            assert all(is_series_value(p["amount"], dep["quantum"]) for p in payouts)
            assert dep["network_fee_amount"] == 0  # Jobcoin has no network fee
            # The ledger's own view: the withdrawal addresses got deposit - fee, all from the pool.
            async with engine.connect() as conn:
                received = 0
                for address in ["w-alice", "w-bob", "w-carol"]:
                    balance, history = await ledger.address_info(conn, address)
                    assert balance > 0
                    assert all(t.from_address == rt.adapter("JOBCOIN").pool_address for t in history)
                    received += balance
                deposit_balance, deposit_history = await ledger.address_info(conn, mix["deposit_address"])
                pool_balance, _ = await ledger.address_info(conn, rt.adapter("JOBCOIN").pool_address)
                verified = await audit.verify(conn)
            assert received == 50 * COIN - dep["fee_amount"] == dep["payout_total"]
            assert deposit_balance == 0
            assert [t.to_address for t in deposit_history if t.from_address == mix["deposit_address"]] == [
                rt.adapter("JOBCOIN").pool_address
            ]
            assert pool_balance == dep["fee_amount"]  # the fee stays in the pool
            assert (await get_mix(rt, mix["id"]))["mix"]["state"] == "completed"
            assert verified > 5
            result = await reconcile(rt, Asset.JOBCOIN)
            assert result.ok, result.detail()
            assert result.actual == result.books == dep["fee_amount"]
        finally:
            await rt.aclose()
            await rt.engine.dispose()


async def test_sanctioned_sender_is_frozen_and_never_pooled(database_url: str, engine: AsyncEngine) -> None:
    async with local_ledger(engine) as led:
        rt = build_runtime(fast_settings(database_url, jobcoin_api_url=led.api_url), database_url)
        try:
            async with engine.begin() as conn:
                await store_list(conn, ["listed-sender"], "operator")
            await ledger.mint(engine, "listed-sender", 20 * COIN)
            mix = await create_mix(rt, MixRequest("JOBCOIN", ["w-1"], 0, 0))
            await ledger.transfer(engine, "listed-sender", mix["deposit_address"], 20 * COIN)
            assert await scan_asset(rt, Asset.JOBCOIN) == 1
            view = await get_mix(rt, mix["id"])
            assert [d["state"] for d in view["deposits"]] == ["frozen"]
            assert "listed-sender" in view["deposits"][0]["reason"]
            assert view["sends"] == []
            async with engine.connect() as conn:
                balance, _ = await ledger.address_info(conn, mix["deposit_address"])
            assert balance == 20 * COIN  # never moved
        finally:
            await rt.aclose()
            await rt.engine.dispose()


@pytest.mark.parametrize(("amount", "reason"), [("0.5", "below"), ("2000000", "above")])
async def test_deposit_outside_limits_is_held(database_url: str, engine: AsyncEngine, amount: str, reason: str) -> None:
    async with local_ledger(engine) as led:
        rt = build_runtime(fast_settings(database_url, jobcoin_api_url=led.api_url), database_url)
        try:
            await ledger.mint(engine, "s", parse_amount(amount, 8))
            mix = await create_mix(rt, MixRequest("JOBCOIN", ["w-1", "w-2"], 0, 0))
            await ledger.transfer(engine, "s", mix["deposit_address"], parse_amount(amount, 8))
            await scan_asset(rt, Asset.JOBCOIN)
            view = await get_mix(rt, mix["id"])
            assert view["deposits"][0]["state"] == "held"
            assert reason in view["deposits"][0]["reason"]
            assert view["sends"] == []
        finally:
            await rt.aclose()
            await rt.engine.dispose()


async def test_several_deposits_and_a_late_one_are_each_mixed(database_url: str, engine: AsyncEngine) -> None:
    async with local_ledger(engine) as led:
        rt = build_runtime(fast_settings(database_url, jobcoin_api_url=led.api_url, mix_ttl_seconds=1), database_url)
        try:
            await ledger.mint(engine, "s", 100 * COIN)
            mix = await create_mix(rt, MixRequest("JOBCOIN", ["w-a", "w-b"], 0, 1))
            await ledger.transfer(engine, "s", mix["deposit_address"], 10 * COIN)
            await ledger.transfer(engine, "s", mix["deposit_address"], 10 * COIN)  # same amount twice
            async with background(run_worker(rt, database_url, concurrency=4)):
                await wait_for_payouts(rt, mix["id"], within=60)
                # Past expiry (ttl 1 s) but inside the grace period: still mixed.
                assert await expire_mixes(rt) == 0  # it has deposits, so it does not expire
                await ledger.transfer(engine, "s", mix["deposit_address"], 5 * COIN)
                for _ in range(300):
                    view = await get_mix(rt, mix["id"])
                    if len(view["deposits"]) == 3 and all(d["state"] == "pooled" for d in view["deposits"]):
                        break
                    await asyncio.sleep(0.1)
                view = await wait_for_payouts(rt, mix["id"], within=60)
            assert sorted(d["amount"] for d in view["deposits"]) == [5 * COIN, 10 * COIN, 10 * COIN]
            per_deposit = Counter(s["deposit_id"] for s in view["sends"] if s["kind"] == "payout")
            assert len(per_deposit) == 3
            async with engine.connect() as conn:
                rows = (await conn.execute(select(deposits).where(deposits.c.mix_id == mix["id"]))).all()
                paid = 0
                for address in ["w-a", "w-b"]:
                    paid += (await ledger.address_info(conn, address))[0]
            assert paid == sum(r.payout_total for r in rows) == sum(r.amount - r.fee_amount for r in rows)
        finally:
            await rt.aclose()
            await rt.engine.dispose()


async def test_one_scan_screens_and_accepts_many_deposits_each_on_its_own(
    database_url: str, engine: AsyncEngine
) -> None:
    """The scan's bulk acceptance gives every deposit its own verdict, audit entry and sweep:
    a listed sender's deposit is frozen and one below its mix's minimum held, in the same
    scan as the clean ones accepted together."""
    async with local_ledger(engine) as led:
        rt = build_runtime(fast_settings(database_url, jobcoin_api_url=led.api_url), database_url)
        try:
            async with engine.begin() as conn:
                await store_list(conn, ["listed-sender"], "operator")
            await ledger.mint(engine, "listed-sender", 20 * COIN)
            await ledger.mint(engine, "s", 100 * COIN)
            frozen_mix = await create_mix(rt, MixRequest("JOBCOIN", ["w-f"], 0, 0))
            held_mix = await create_mix(rt, MixRequest("JOBCOIN", ["w-h"], 0, 0))
            clean = [await create_mix(rt, MixRequest("JOBCOIN", [f"w-c{i}"], 0, 0)) for i in range(6)]
            await ledger.transfer(engine, "listed-sender", frozen_mix["deposit_address"], 20 * COIN)
            await ledger.transfer(engine, "s", held_mix["deposit_address"], COIN // 2)
            for mix in clean:
                await ledger.transfer(engine, "s", mix["deposit_address"], 10 * COIN)
            assert await scan_asset(rt, Asset.JOBCOIN) == 8
            async with engine.connect() as conn:
                rows = (await conn.execute(select(deposits))).all()
                entries = (
                    await conn.execute(
                        select(audit_log.c.action, audit_log.c.entity_id).where(
                            audit_log.c.action.in_(["deposit.accepted", "deposit.frozen", "deposit.held"])
                        )
                    )
                ).all()
                sweeps = (await conn.execute(select(sends).where(sends.c.kind == "sweep"))).all()
            state = {d.mix_id: d.state for d in rows}
            assert state[frozen_mix["id"]] == "frozen"
            assert state[held_mix["id"]] == "held"
            assert all(state[m["id"]] == "sweeping" for m in clean)
            verdicts = Counter((action, entity) for action, entity in entries)
            by_mix = {d.mix_id: str(d.id) for d in rows}
            assert verdicts == Counter(
                [("deposit.frozen", by_mix[frozen_mix["id"]]), ("deposit.held", by_mix[held_mix["id"]])]
                + [("deposit.accepted", by_mix[m["id"]]) for m in clean]
            )
            assert sorted(s.mix_id for s in sweeps) == sorted(m["id"] for m in clean)
            assert all(s.amount == 10 * COIN and s.state == "scheduled" for s in sweeps)
        finally:
            await rt.aclose()
            await rt.engine.dispose()


async def test_bulk_acceptance_undone_when_a_deposit_moved_meanwhile(database_url: str, engine: AsyncEngine) -> None:
    """A deposit another path moved after it was read undoes the bulk step; the others are
    then accepted one by one and the moved one is left as it is."""
    async with local_ledger(engine) as led:
        rt = build_runtime(fast_settings(database_url, jobcoin_api_url=led.api_url), database_url)
        try:
            await ledger.mint(engine, "s", 100 * COIN)
            mixes = [await create_mix(rt, MixRequest("JOBCOIN", [f"w-{i}"], 0, 0)) for i in range(3)]
            for mix in mixes:
                await ledger.transfer(engine, "s", mix["deposit_address"], 10 * COIN)
            adapter = rt.adapter(Asset.JOBCOIN)
            watched = {m["deposit_address"]: m["id"] for m in mixes}
            result = await engine_scan(adapter, list(watched), None)
            async with engine.begin() as conn:
                for t in result.transfers:
                    await conn.execute(
                        deposits.insert().values(
                            mix_id=watched[t.to_address],
                            asset="JOBCOIN",
                            chain_ref=t.ref,
                            deposit_address=t.to_address,
                            from_addresses=list(t.from_addresses),
                            amount=t.amount,
                            state="seen",
                        )
                    )
                ready = [(d, 1) for d in (await conn.execute(select(deposits).order_by(deposits.c.id))).all()]
                # Another path moved the second one after the scan read it.
                await conn.execute(deposits.update().where(deposits.c.id == ready[1][0].id).values(state="held"))
            await confirm_deposits(rt, ready, await adapter.quote_network_fee())
            async with engine.connect() as conn:
                states = [d.state for d in (await conn.execute(select(deposits).order_by(deposits.c.id))).all()]
                accepted = (
                    await conn.execute(select(func.count()).where(audit_log.c.action == "deposit.accepted"))
                ).scalar_one()
                sweeps = (await conn.execute(select(sends.c.deposit_id).where(sends.c.kind == "sweep"))).all()
            assert states == ["sweeping", "held", "sweeping"]
            assert accepted == 2
            assert sorted(s.deposit_id for s in sweeps) == [ready[0][0].id, ready[2][0].id]
        finally:
            await rt.aclose()
            await rt.engine.dispose()
