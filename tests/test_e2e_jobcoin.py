"""End to end on the local Jobcoin ledger over real HTTP, with a real worker and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.chains.jobcoin import ledger
from mixhouse.db.tables import deposits
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.mixes import MixRequest, create_mix, expire_mixes, get_mix
from mixhouse.mixer.planner import fee_bounds, is_series_value
from mixhouse.mixer.reconcile import reconcile
from mixhouse.mixer.screening import store_list
from mixhouse.mixer.setup import build_runtime
from mixhouse.money import Asset, parse_amount
from mixhouse.servers import background
from mixhouse.worker import run_worker
from tests.e2e import fast_settings, local_ledger, wait_for_payouts

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
