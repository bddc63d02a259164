"""Bitcoin pool key rotation while mixes are in flight and the worker is SIGKILLed (issue 12).

A real worker process (``python -m mixhouse worker``) on the bcoin regtest node mixes a batch of
deposits; the pool key is rotated in the middle and the worker is SIGKILLed and restarted at four
moments chosen by what has happened: a payout of the old pool signed, right after the rotation
(before the worker follows it), the pool move stored (maybe not broadcast), and the late top-up's
move stored while the payouts of the mixes made after the rotation are in flight; then twice at
random moments (``MIXHOUSE_CRASH_SEED``) while those payouts are still in flight. At the end
(:func:`tests.test_key_rotation_bitcoin.check_rotation_outcome`): every payout on chain exactly
once with its satoshi, the old generation's coins all moved and the generation retired, its keys
refused, the books reconciled, the audit chain verified.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import pytest
from eth_account import Account
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.app.build import build_runtime
from mixhouse.chains.bitcoin.adapter import BitcoinAdapter
from mixhouse.db.tables import payout_batches, pool_moves
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.money import Asset
from tests.e2e import bitcoin_worker_env, start_worker
from tests.fixtures.bcoin import Bcoin
from tests.test_e2e_bitcoin import bitcoin_settings, mining
from tests.test_key_rotation_bitcoin import (
    all_done,
    check_rotation_outcome,
    describe,
    move_stored,
    payouts_signed,
    rotate_btc,
    until,
)

BTC = 100_000_000
DEADLINE = 150.0  # seconds for the whole run: a loaded 2-core machine


def _worker_env(database_url: str, bcoin: Bcoin, mnemonic: str) -> dict[str, str]:
    return bitcoin_worker_env(database_url, bcoin, mnemonic, MIXHOUSE_BITCOIN_MIN_DEPOSIT="100000")


async def _in_flight(engine: AsyncEngine) -> str:
    """What was in flight when a kill landed (moves by state, open payout batches)."""
    async with engine.connect() as conn:
        moves = sorted((await conn.execute(select(pool_moves.c.state))).scalars())
        batches = (
            await conn.execute(select(func.count()).select_from(payout_batches).where(payout_batches.c.state == "open"))
        ).scalar_one()
    return f"moves {moves}, {batches} open batches"


async def _moves(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(pool_moves))).scalar_one())


@pytest.mark.timeout(400)
async def test_bitcoin_rotation_with_worker_kills(database_url: str, engine: AsyncEngine, bcoin: Bcoin) -> None:
    settings = bitcoin_settings(database_url, bcoin)
    rt = build_runtime(settings, database_url)
    adapter = rt.adapter(Asset.BTC)
    assert isinstance(adapter, BitcoinAdapter)
    Account.enable_unaudited_hdwallet_features()
    user = Bip84Keyring(Account.create_with_mnemonic()[1], "regtest")
    env = _worker_env(database_url, bcoin, settings.bitcoin_mnemonic.get_secret_value())
    deadline = time.monotonic() + DEADLINE
    created = 0
    kills = 0
    rnd = random.Random(int(os.environ.get("MIXHOUSE_CRASH_SEED", "12")))

    async def new_mixes(count: int) -> None:
        nonlocal created
        for _ in range(count):
            addresses = [user.address(0, 10 * created + k) for k in range(1 + created % 3)]
            mix = await create_mix(rt, MixRequest("BTC", addresses, 0, 2))
            await bcoin.fund(mix["deposit_address"], BTC // 5 + created * 10_000)
            created += 1

    old = adapter.pool_address
    worker = start_worker(env)

    landed: list[str] = []

    async def kill_and_restart() -> None:
        nonlocal worker, kills
        worker.send_signal(signal.SIGKILL)
        await asyncio.to_thread(worker.wait, 30)
        kills += 1
        landed.append(await _in_flight(engine))
        worker = start_worker(env)

    try:
        async with mining(bcoin, every=0.4):
            await new_mixes(4)
            for _ in range(4):
                await bcoin.fund(old, BTC // 2)  # operator liquidity in generation 0
            await until("a payout signed", lambda: payouts_signed(engine), deadline, lambda: describe(engine))
            await kill_and_restart()  # 1: payouts of the old pool in flight
            new = await rotate_btc(engine, adapter)
            await kill_and_restart()  # 2: right after the rotation, before the worker follows it
            await new_mixes(3)
            await until("the pool move stored", lambda: move_stored(engine), deadline, lambda: describe(engine))
            await kill_and_restart()  # 3: the move stored, maybe not broadcast
            late_topup = await bcoin.fund(old, BTC // 10)  # reaches the old generation late

            async def second_move() -> bool:
                return await _moves(engine) >= 2

            await until("the late top-up's move stored", second_move, deadline, lambda: describe(engine))
            await kill_and_restart()  # 4: the second move and the new mixes' payouts in flight
            for _ in range(2):  # 5, 6: at random moments while the new mixes' payouts are in flight
                await asyncio.sleep(rnd.uniform(0.5, 2.0))
                await kill_and_restart()
            await until(
                "everything paid and generation 0 retired",
                lambda: all_done(engine, created),
                deadline,
                lambda: describe(engine),
            )
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)

    try:
        assert kills == 6
        print("the kills landed with: " + "; ".join(f"{i + 1}: {what}" for i, what in enumerate(landed)))
        async with engine.connect() as conn:
            moves = (await conn.execute(select(pool_moves).order_by(pool_moves.c.id))).all()
        raw = [bytes(m.raw_tx) for m in moves]
        assert len(set(raw)) == len(moves) == 2  # one move per call that found coins; no move signed twice
        tx = await bcoin.rpc("getrawtransaction", moves[1].txid, True)
        assert late_topup in {vin["txid"] for vin in tx["vin"]}
        await check_rotation_outcome(rt, engine, bcoin, old=old, new=new)
    finally:
        await rt.aclose()
        await rt.engine.dispose()
