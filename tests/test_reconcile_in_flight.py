"""Reconciliation never calls a send that was merely in flight a deficit (issue 14, item 5).

A payout's ``signed_at`` is taken by the signer before its transaction commits. A payout
signed just before the reconciliation read the books, committed just after, and landed before
the balance was read was neither in the books nor, by that clock, "signed after the books", so
its amount showed as a deficit and paused payouts. The check now works in commit order.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.app.build import build_runtime
from mixhouse.chains.base import UtxoChainAdapter
from mixhouse.chains.jobcoin import ledger
from mixhouse.db.tables import sends, utxos
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.reconcile import reconcile
from mixhouse.mixer.sends import execute_send, payouts_paused, prepared_of, sign_account_send
from mixhouse.money import Asset
from mixhouse.unit import unit
from tests.e2e import fast_settings, local_ledger
from tests.fixtures.bcoin import Bcoin
from tests.test_e2e_bitcoin import bitcoin_settings

COIN = 10**8
WAIT = 30.0  # seconds: a deadline for each step, never a fixed sleep


async def test_a_payout_committed_after_the_books_were_read_is_not_a_deficit(
    database_url: str, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with local_ledger(engine) as led:
        rt = build_runtime(fast_settings(database_url, jobcoin_api_url=led.api_url), database_url)
        try:
            await ledger.mint(engine, "sender", 10 * COIN)
            mix = await create_mix(rt, MixRequest("JOBCOIN", ["in-flight-w"], 0, 0))
            await ledger.transfer(engine, "sender", mix["deposit_address"], 10 * COIN)
            await scan_asset(rt, Asset.JOBCOIN)
            async with engine.connect() as conn:
                sweep_id = (await conn.execute(select(sends.c.id).where(sends.c.kind == "sweep"))).scalar_one()
            assert await execute_send(rt, sweep_id) == "confirmed"
            assert (await reconcile(rt, Asset.JOBCOIN)).ok
            async with engine.connect() as conn:
                payout = (await conn.execute(select(sends).where(sends.c.kind == "payout").limit(1))).one()
            adapter = rt.adapter("JOBCOIN")

            signed = asyncio.Event()
            commit_now = asyncio.Event()
            holder: dict[str, Any] = {}

            async def sign_and_hold() -> None:
                # The payout is signed (signed_at = the signer's clock, now) in a transaction
                # that stays open until the reconciliation has read the books.
                async with unit(engine) as work:
                    holder["row"] = await sign_account_send(work, adapter, payout)
                    signed.set()
                    await commit_now.wait()

            signer = asyncio.create_task(sign_and_hold())
            await asyncio.wait_for(signed.wait(), WAIT)
            real_balance = adapter.balance

            async def balance_after_the_payout_landed(address: str) -> int:
                # reconcile() has read the books when it asks for the balance: the signer
                # commits now and its payout lands before the balance is read.
                commit_now.set()
                await asyncio.wait_for(signer, WAIT)
                await adapter.broadcast(prepared_of(holder["row"]))
                return await real_balance(address)

            monkeypatch.setattr(adapter, "balance", balance_after_the_payout_landed)
            result = await reconcile(rt, Asset.JOBCOIN)
            monkeypatch.undo()
            assert result.ok, result.detail()
            assert result.actual == 10 * COIN - payout.amount
            assert not await payouts_paused(rt, "JOBCOIN")
            # The payout then completes (found in the ledger's history once the settle time has
            # passed) and the books agree without any allowance.
            deadline = time.monotonic() + WAIT
            while await execute_send(rt, payout.id) != "confirmed":
                assert time.monotonic() < deadline, "the landed payout was never confirmed"
                await asyncio.sleep(0.2)
            settled = await reconcile(rt, Asset.JOBCOIN)
            assert settled.ok
            assert settled.low == settled.high == settled.actual
        finally:
            await rt.aclose()
            await rt.engine.dispose()


async def test_a_real_deficit_next_to_a_payout_in_flight_still_pauses_payouts(
    database_url: str, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit-order allowance covers the in-flight payout and nothing more."""
    async with local_ledger(engine) as led:
        rt = build_runtime(fast_settings(database_url, jobcoin_api_url=led.api_url), database_url)
        try:
            await ledger.mint(engine, "sender", 10 * COIN)
            mix = await create_mix(rt, MixRequest("JOBCOIN", ["in-flight-x"], 0, 0))
            await ledger.transfer(engine, "sender", mix["deposit_address"], 10 * COIN)
            await scan_asset(rt, Asset.JOBCOIN)
            async with engine.connect() as conn:
                sweep_id = (await conn.execute(select(sends.c.id).where(sends.c.kind == "sweep"))).scalar_one()
            assert await execute_send(rt, sweep_id) == "confirmed"
            async with engine.connect() as conn:
                payout = (await conn.execute(select(sends).where(sends.c.kind == "payout").limit(1))).one()
            adapter = rt.adapter("JOBCOIN")
            pool = adapter.pool_address
            real_balance = adapter.balance

            async def balance_after_a_theft(address: str) -> int:
                # A payout is signed after the books were read and lands, and one base unit
                # leaves the pool behind the books' back.
                async with unit(engine) as work:
                    row = await sign_account_send(work, adapter, payout)
                await adapter.broadcast(prepared_of(row))
                await ledger.transfer(engine, pool, "thief", 1)
                return await real_balance(address)

            monkeypatch.setattr(adapter, "balance", balance_after_a_theft)
            result = await reconcile(rt, Asset.JOBCOIN)
            monkeypatch.undo()
            assert not result.ok
            assert "deficit of 1 base units" in result.detail()
            assert await payouts_paused(rt, "JOBCOIN")
        finally:
            await rt.aclose()
            await rt.engine.dispose()


async def _pool_coin(bcoin: Bcoin, adapter: UtxoChainAdapter, sat: int) -> tuple[str, int]:
    """Pay ``sat`` to the pool on the node; returns the new coin's outpoint."""
    txid = await bcoin.fund(adapter.pool_address, sat)
    await bcoin.mine(3)
    for vout in range(4):
        if await adapter.unspent_amount(txid, vout) == sat:
            return txid, vout
    raise AssertionError("the funding output was not found")


@pytest.mark.parametrize("ours", [True, False])
async def test_a_pool_coin_our_payout_spent_during_the_check_is_not_a_deficit(
    database_url: str, engine: AsyncEngine, bcoin: Bcoin, monkeypatch: pytest.MonkeyPatch, ours: bool
) -> None:
    """UTXO pools: a coin read as available, then reserved and spent by one of our payouts
    before the chain was asked, is in flight, not missing. A coin spent by anyone else is."""
    rt = build_runtime(bitcoin_settings(database_url, bcoin), database_url)
    try:
        adapter = rt.adapter("BTC")
        assert isinstance(adapter, UtxoChainAdapter)
        coins = [await _pool_coin(bcoin, adapter, sat) for sat in (150_000, 250_000)]
        async with engine.begin() as conn:
            for (txid, vout), sat in zip(coins, (150_000, 250_000), strict=True):
                await conn.execute(
                    insert(utxos).values(
                        asset="BTC",
                        txid=txid,
                        vout=vout,
                        address=adapter.pool_address,
                        key_chain=1,
                        key_index=0,
                        amount=sat,
                        state="available",
                    )
                )
        assert (await reconcile(rt, Asset.BTC)).ok
        spent_txid, spent_vout = coins[0]
        real_unspent = adapter.unspent_amount

        async def spent_while_checking(txid: str, vout: int) -> int | None:
            if (txid, vout) != (spent_txid, spent_vout):
                return await real_unspent(txid, vout)
            if ours:
                # A payout reserves the coin (committed) before its transaction is broadcast.
                async with engine.begin() as conn:
                    await conn.execute(
                        update(utxos).where(utxos.c.txid == txid, utxos.c.vout == vout).values(state="reserved")
                    )
            return None  # gone from the chain's UTXO set

        monkeypatch.setattr(adapter, "unspent_amount", spent_while_checking)
        result = await reconcile(rt, Asset.BTC)
        monkeypatch.undo()
        if ours:
            assert result.ok, result.detail()
            assert result.books == result.actual == 250_000
        else:
            assert not result.ok
            assert "deficit of 150000" in result.detail()
    finally:
        await rt.aclose()
        await rt.engine.dispose()
