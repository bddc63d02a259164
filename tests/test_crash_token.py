"""Token mixes survive SIGKILLs: every USDT payout, sweep and gas top-up leaves exactly once.

A real worker process (``python -m mixhouse worker``) mixes USDT (TetherToken's bytecode) on anvil
and is SIGKILLed again and again while sweeps, gas top-ups and payouts are in flight; then a last
worker finishes. The chain is the judge: the token's ``Transfer`` logs out of the pool and into it
are exactly the payouts and sweeps the books recorded, the pool's ETH nonce counts exactly the
sends it recorded (no unrecorded top-up or payout), every deposit address holds exactly one
top-up less its sweep's gas, and the books reconcile.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from collections import Counter
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.app.build import build_runtime
from mixhouse.chains.evm import EvmAdapter
from mixhouse.chains.evm.token import Erc20Adapter
from mixhouse.db.tables import audit_log, chain_cursors, deposits, sends
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.reconcile import reconcile
from mixhouse.money import Asset
from mixhouse.servers import background
from tests.e2e import evm_worker_env, start_worker, unfinished_sends
from tests.fixtures.anvil import USDT, Anvil, deploy_token, token_transfers
from tests.test_e2e_token import NETWORK_FEE, token_settings

ETHER = 10**18
MIXES = 6


async def _keep_mining(anvil: Anvil) -> None:
    while True:
        await anvil.mine(1)
        await asyncio.sleep(0.2)


def _worker_env(settings: Any, mnemonic: str) -> dict[str, str]:
    tokens = json.dumps([t.model_dump() for t in settings.evm_tokens])
    return evm_worker_env(
        settings.database_url, settings.evm_rpc_url, settings.evm_chain_id, mnemonic, MIXHOUSE_EVM_TOKENS=tokens
    )


async def _audit_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(audit_log))).scalar_one())


async def _all_paid(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        states = [r.state for r in (await conn.execute(select(deposits.c.state))).all()]
    return len(states) == MIXES and all(s == "pooled" for s in states) and await unfinished_sends(engine) == 0


async def _in_flight(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    select(func.count()).select_from(sends).where(sends.c.state.in_(["signed", "broadcast"]))
                )
            ).scalar_one()
        )


@pytest.mark.timeout(600)
async def test_worker_killed_while_token_mixes_are_in_flight_pays_each_payout_once(
    database_url: str, engine: AsyncEngine, anvil: Anvil, evm_adapter: EvmAdapter
) -> None:
    rnd = random.Random(int(os.environ.get("MIXHOUSE_CRASH_SEED", "20261202")))
    world = await deploy_token(anvil, evm_adapter, "usdt")
    since = await anvil.block_number()
    Account.enable_unaudited_hdwallet_features()
    _, mnemonic = Account.create_with_mnemonic()
    settings = token_settings(database_url, anvil, mnemonic, world, "USDTK")
    rt = build_runtime(settings, database_url)
    token = rt.adapter("USDTK")
    assert isinstance(token, Erc20Adapter)
    try:
        await anvil.fund(token.pool_address, ETHER)
        mixes: list[dict[str, Any]] = []
        for i in range(MIXES):
            addresses = [token.normalize_address("0x" + f"{rnd.getrandbits(160):040x}") for _ in range(1 + i % 3)]
            mixes.append(await create_mix(rt, MixRequest("USDTK", addresses, 0, 20)))
        env = _worker_env(settings, mnemonic)
        kills = int(os.environ.get("MIXHOUSE_CRASH_KILLS", "12"))
        hit_in_flight = 0
        async with background(_keep_mining(anvil)):
            # The deposits arrive once a worker watches the addresses (its first scan keeps a
            # cursor from then on), as they would with a worker always running.
            proc = start_worker(env)
            for _ in range(300):
                async with engine.connect() as conn:
                    if (await conn.execute(select(chain_cursors).where(chain_cursors.c.asset == "USDTK"))).first():
                        break
                await asyncio.sleep(0.1)
            for i, mix in enumerate(mixes):
                await world.pay(mix["deposit_address"], (100 + 10 * i) * USDT)
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            for _ in range(kills):
                if await _all_paid(engine):
                    break
                proc = start_worker(env)
                started = await _audit_count(engine)
                for _ in range(300):
                    if await _audit_count(engine) > started or await _all_paid(engine):
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(rnd.uniform(0.0, 2.0))
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
                hit_in_flight += await _in_flight(engine) > 0
            print(f"kills: {kills}, with a send in flight: {hit_in_flight}")
            assert hit_in_flight >= 2, "too few kills landed while a send was in flight to test anything"
            proc = start_worker(env)
            try:
                for _ in range(600):
                    if await _all_paid(engine):
                        break
                    await asyncio.sleep(0.25)
            finally:
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proc.wait)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(sends))).all()
            deps = (await conn.execute(select(deposits))).all()
            assert await audit.verify(conn) > 0
        stuck = [(s.id, s.kind, s.state, s.last_error) for s in rows if s.state != "confirmed"]
        assert not stuck, f"sends not finished: {stuck}"
        pool = token.pool_address
        payouts = [s for s in rows if s.kind == "payout"]
        sweeps = [s for s in rows if s.kind == "sweep"]
        gas = [s for s in rows if s.kind == "gas"]
        assert len(sweeps) == len(gas) == MIXES
        # The chain's token logs are exactly the recorded payouts and sweeps: none doubled or lost.
        assert await token_transfers(token, side=1, address=pool, since=since) == Counter(
            (s.to_address, int(s.amount)) for s in payouts
        )
        assert await token_transfers(token, side=2, address=pool, since=since) == Counter(
            (s.from_address, int(s.amount)) for s in sweeps
        )
        # Every transaction the pool ever signed on chain is a recorded, confirmed send.
        assert await token.next_nonce(pool) == len(payouts) + len(gas)
        assert sorted(int(s.nonce) for s in payouts + gas) == list(range(len(payouts) + len(gas)))
        # One top-up per deposit address: what is left there is that top-up less its sweep's gas.
        for sweep in sweeps:
            topup = next(g for g in gas if g.deposit_id == sweep.deposit_id)
            used = await token.gas_paid(str(sweep.txid))
            assert used is not None
            assert await token.gas_balance(sweep.from_address) == int(topup.amount) - used
        for mix in mixes:
            said: Counter[str] = Counter()
            for p in payouts:
                if p.mix_id == mix["id"]:
                    said[p.to_address] += int(p.amount)
            for address in mix["withdrawal_addresses"]:
                assert await token.balance(address) == said[address] > 0
        assert all(d.network_fee_amount >= NETWORK_FEE for d in deps)
        result = await reconcile(rt, Asset("USDTK"))
        assert result.ok, result.detail()
    finally:
        await rt.aclose()
        await rt.engine.dispose()
