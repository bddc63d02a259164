"""Reconciliation pauses payouts on a mismatch; a reorg that removes a deposit drops it."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.app.build import build_runtime
from mixhouse.chains.jobcoin import ledger
from mixhouse.db.tables import sends
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.mixes import MixRequest, create_mix, get_mix
from mixhouse.mixer.reconcile import reconcile
from mixhouse.mixer.rounds import run_round
from mixhouse.mixer.sends import execute_send, payouts_paused
from mixhouse.money import Asset
from tests.e2e import fast_settings, local_ledger, scan_caught_up
from tests.fixtures.anvil import Anvil

COIN = 10**8
# A mnemonic of this test's own (named, so a failure's traceback never prints it).
REORG_MNEMONIC = "legal winner thank year wave sausage worth useful legal winner thank yellow"


async def test_a_pool_deficit_pauses_payouts_until_the_books_agree(database_url: str, engine: AsyncEngine) -> None:
    async with local_ledger(engine) as led:
        rt = build_runtime(fast_settings(database_url, jobcoin_api_url=led.api_url), database_url)
        try:
            await ledger.mint(engine, "sender", 10 * COIN)
            mix = await create_mix(rt, MixRequest("JOBCOIN", ["w-1", "w-2"], 0, 0))
            await ledger.transfer(engine, "sender", mix["deposit_address"], 10 * COIN)
            await scan_asset(rt, Asset.JOBCOIN)
            async with engine.connect() as conn:
                sweep_id = (await conn.execute(select(sends.c.id).where(sends.c.kind == "sweep"))).scalar_one()
            assert await execute_send(rt, sweep_id) == "confirmed"
            assert (await reconcile(rt, Asset.JOBCOIN)).ok
            # Coins leave the pool behind the books' back (Jobcoin has no authentication).
            pool = rt.adapter("JOBCOIN").pool_address
            await ledger.transfer(engine, pool, "thief", 1 * COIN)
            result = await reconcile(rt, Asset.JOBCOIN)
            assert not result.ok
            assert "deficit of 100000000" in result.detail()
            assert await payouts_paused(rt, "JOBCOIN")
            payout_ids = [s["id"] for s in (await get_mix(rt, mix["id"]))["sends"] if s["kind"] == "payout"]
            assert payout_ids
            # A paused round releases (the gate is off here) but signs nothing.
            paused_round = await run_round(rt, Asset.JOBCOIN)
            assert (paused_round.released, paused_round.signed) == (1, 0)
            for send_id in payout_ids:
                assert await execute_send(rt, send_id) == "scheduled"  # held back, not sent
            async with engine.connect() as conn:
                assert (await ledger.address_info(conn, "w-1"))[0] == 0
            # The operator puts the coins back; the next check agrees and payouts resume.
            await ledger.transfer(engine, "thief", pool, 1 * COIN)
            assert (await reconcile(rt, Asset.JOBCOIN)).ok
            for send_id in payout_ids:
                assert await execute_send(rt, send_id) == "confirmed"
            async with engine.connect() as conn:
                paid = (await ledger.address_info(conn, "w-1"))[0] + (await ledger.address_info(conn, "w-2"))[0]
            dep = (await get_mix(rt, mix["id"]))["deposits"][0]
            assert paid == dep["payout_total"] == 10 * COIN - dep["fee_amount"]
        finally:
            await rt.aclose()
            await rt.engine.dispose()


async def test_a_deposit_removed_by_a_reorg_is_dropped_and_never_paid(
    database_url: str, engine: AsyncEngine, anvil: Anvil
) -> None:
    settings = fast_settings(
        database_url,
        jobcoin_enabled=False,
        evm_enabled=True,
        evm_rpc_url=anvil.rpc_url,
        evm_chain_id=anvil.chain_id,
        evm_mnemonic=REORG_MNEMONIC,
        evm_confirmations=5,
    )
    rt = build_runtime(settings, database_url)
    try:
        mix = await create_mix(rt, MixRequest("ETH", ["0x52908400098527886E0F7030069857D2E4169EE7"], 0, 0))
        snapshot = await anvil.snapshot()
        await anvil.fund(mix["deposit_address"], 10**17)
        await anvil.mine(1)
        await scan_caught_up(rt, Asset.ETH)
        dep = (await get_mix(rt, mix["id"]))["deposits"][0]
        assert dep["state"] == "seen"
        assert 1 <= dep["confirmations"] < 5
        await anvil.revert(snapshot)  # the blocks holding the deposit are gone
        await anvil.mine(6)
        await scan_asset(rt, Asset.ETH)
        view = await get_mix(rt, mix["id"])
        assert view["deposits"][0]["state"] == "dropped"
        assert view["sends"] == []  # nothing swept, nothing paid
    finally:
        await rt.aclose()
        await rt.engine.dispose()
