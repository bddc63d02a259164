"""Crash test on Bitcoin: a worker SIGKILLed at random moments never pays a payout twice.

Mixes are in flight on the bcoin regtest node while a real worker process is killed and
restarted; blocks are mined all along. Payouts leave in batches (several mixes' payouts in
one transaction); the test counts the kills that hit a batch in flight (signed, not yet
confirmed). At the end every withdrawal address holds exactly the payouts recorded for it
(the node's own view), no payout spent the deposit of a mix it pays, and the books of the UTXO
pool agree with the chain.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import defaultdict

import pytest
from eth_account import Account
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.app.build import build_runtime
from mixhouse.db.tables import deposits, payout_batches, sends
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.reconcile import reconcile
from mixhouse.money import Asset
from tests.e2e import bitcoin_worker_env, start_worker, unfinished_sends
from tests.fixtures.bcoin import Bcoin
from tests.test_e2e_bitcoin import bitcoin_settings, mining

BTC = 100_000_000


async def _batch_open_or_done(engine: AsyncEngine, *, within: float) -> None:
    """Return once a payout batch is open (signed, not confirmed), once every payout is
    confirmed after some were made, or after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        async with engine.connect() as conn:
            if (
                await conn.execute(select(payout_batches.c.id).where(payout_batches.c.state == "open"))
            ).first() is not None:
                return
            payouts = (await conn.execute(select(sends.c.state).where(sends.c.kind == "payout"))).scalars().all()
        if payouts and set(payouts) == {"confirmed"}:
            return
        await asyncio.sleep(0.05)


@pytest.mark.timeout(700)
async def test_bitcoin_worker_killed_at_random_moments_pays_every_payout_exactly_once(
    database_url: str, engine: AsyncEngine, bcoin: Bcoin
) -> None:
    rnd = random.Random(int(os.environ.get("MIXHOUSE_CRASH_SEED", "84")))
    settings = bitcoin_settings(database_url, bcoin)
    rt = build_runtime(settings, database_url)
    adapter = rt.adapter("BTC")
    Account.enable_unaudited_hdwallet_features()
    user = Bip84Keyring(Account.create_with_mnemonic()[1], "regtest")
    env = bitcoin_worker_env(database_url, bcoin, settings.bitcoin_mnemonic.get_secret_value())
    try:
        mixes = []
        for i in range(4):
            addresses = [user.address(0, 10 * i + k) for k in range(1 + i % 3)]
            mix = await create_mix(rt, MixRequest("BTC", addresses, 0, 3))
            await bcoin.fund(mix["deposit_address"], BTC // 4 + i * 1_000_000)
            mixes.append(mix)
        # Operator liquidity in several coins: payouts are 1-2-5 pieces now, several per address,
        # and each spends a confirmed coin (unconfirmed change is not spent).
        for _ in range(8):
            await bcoin.fund(adapter.pool_address, BTC // 2)
        kills_in_batch = 0
        async with mining(bcoin, every=0.4):
            for _ in range(int(os.environ.get("MIXHOUSE_CRASH_KILLS", "10"))):
                proc = start_worker(env)
                await asyncio.sleep(rnd.uniform(1.0, 3.5))
                # Aim at a batch in flight while payouts are left: wait (bounded) for one to be open.
                await _batch_open_or_done(engine, within=10.0)
                await asyncio.sleep(rnd.uniform(0.0, 0.3))
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
                async with engine.connect() as conn:
                    in_flight = (
                        await conn.execute(select(payout_batches.c.id).where(payout_batches.c.state == "open"))
                    ).first()
                kills_in_batch += in_flight is not None
            proc = start_worker(env)
            try:
                for _ in range(1600):
                    await asyncio.sleep(0.25)
                    async with engine.connect() as conn:
                        states = [r.state for r in (await conn.execute(select(deposits.c.state))).all()]
                    if len(states) == len(mixes) and set(states) == {"pooled"} and await unfinished_sends(engine) == 0:
                        break
            finally:
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proc.wait)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(sends))).all()
            deps = {d.mix_id: d for d in (await conn.execute(select(deposits))).all()}
            assert await audit.verify(conn) > 0
            batches = (await conn.execute(select(payout_batches))).all()
        stuck = [(s.id, s.state, s.last_error) for s in rows if s.state != "confirmed"]
        assert not stuck, f"sends not finished: {stuck}"
        # Every payout left in a batch, and batches paid several mixes at once.
        assert all(s.batch_id is not None for s in rows)
        shared = [b for b in batches if len({s.mix_id for s in rows if s.batch_id == b.id}) > 1]
        assert shared, "no transaction paid two mixes"
        print(
            f"{kills_in_batch} kills hit a batch in flight; {len(batches)} batches "
            f"({sum(b.state == 'replanned' for b in batches)} re-planned), {len(shared)} paying several mixes, "
            f"{len(rows)} payouts"
        )
        assert len(deps) == len(mixes)
        expected: dict[str, int] = defaultdict(int)
        for send in rows:
            expected[send.to_address] += send.amount
            tx = await bcoin.rpc("getrawtransaction", send.txid, True)
            spent = {f"{vin['txid']}:{vin['vout']}" for vin in tx["vin"]}
            members = {s.mix_id for s in rows if s.txid == send.txid}
            assert not spent & {deps[m].chain_ref for m in members}, "a payout spent the deposit of a mix it pays"
        for address, amount in expected.items():
            assert await adapter.balance(address) == amount, f"{address} was paid twice or not at all"
        for mix in mixes:
            dep = deps[mix["id"]]
            paid = sum(s.amount for s in rows if s.mix_id == mix["id"])
            assert paid == dep.payout_total == dep.amount - dep.fee_amount - dep.network_fee_amount
        assert (await reconcile(rt, Asset.BTC)).ok
    finally:
        await rt.aclose()
        await rt.engine.dispose()
