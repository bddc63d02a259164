"""Pool key rotation while ETH mixes are in flight and the worker is SIGKILLed (issue 12).

A real worker process (``python -m mixhouse worker``) on a real anvil node mixes a batch of
deposits; the pool key is rotated in the middle, and the worker is SIGKILLed and restarted at
three moments chosen by what has happened (a payout signed, the rotation done, the move stored).
At the end: every payout is on chain exactly once with its amount, the old pool is empty and
retired, no key.used entry of the old key follows its retirement, the books reconcile and the
audit chain verifies.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from eth_account import Account
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.app.build import build_runtime
from mixhouse.chains.evm.adapter import EvmAdapter
from mixhouse.db.tables import audit_log, chain_cursors, mixes, pool_generations, pool_moves, sends
from mixhouse.keys.hd import POOL_PATH
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.pool_rotation import ensure_first_generation, rotate
from mixhouse.mixer.reconcile import reconcile
from mixhouse.money import Asset
from mixhouse.servers import background
from tests.e2e import evm_worker_env, fast_settings, start_worker
from tests.fixtures.anvil import Anvil

ETHER = 10**18
MIXES_BEFORE = 30
MIXES_AFTER = 20
DEADLINE = 420.0  # seconds, for the whole run: a loaded 2-core machine


def _worker_env(database_url: str, anvil: Anvil, mnemonic: str) -> dict[str, str]:
    return evm_worker_env(database_url, anvil.rpc_url, anvil.chain_id, mnemonic)


async def _keep_mining(anvil: Anvil) -> None:
    while True:
        await anvil.mine(1)
        await asyncio.sleep(0.2)  # a block interval, not a wait for a result


async def _until(what: str, check: Callable[[], Awaitable[bool]], deadline: float) -> None:
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not before the deadline: {what}")


async def _count(engine: AsyncEngine, *where: object) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(sends).where(*where))).scalar_one())  # type: ignore[arg-type]


@pytest.mark.timeout(600)
async def test_rotation_during_mixes_with_worker_kills(database_url: str, engine: AsyncEngine, anvil: Anvil) -> None:
    Account.enable_unaudited_hdwallet_features()
    _, mnemonic = Account.create_with_mnemonic()
    settings = fast_settings(
        database_url,
        jobcoin_enabled=False,
        evm_enabled=True,
        evm_rpc_url=anvil.rpc_url,
        evm_chain_id=anvil.chain_id,
        evm_mnemonic=mnemonic,
        evm_confirmations=3,
    )
    rt = build_runtime(settings, database_url)
    adapter = rt.adapter(Asset.ETH)
    assert isinstance(adapter, EvmAdapter)
    rnd = random.Random(20261202)
    env = _worker_env(database_url, anvil, mnemonic)
    deadline = time.monotonic() + DEADLINE
    kills = 0
    worker = start_worker(env)

    def kill_and_restart() -> None:
        nonlocal worker, kills
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        kills += 1
        worker = start_worker(env)

    async def new_mix() -> str:
        to = [adapter.normalize_address(f"0x{rnd.getrandbits(160):040x}") for _ in range(2)]
        address: str = (await create_mix(rt, MixRequest("ETH", to, 0, 3)))["deposit_address"]
        return address

    async def new_mixes(count: int) -> None:
        for _ in range(count):
            await anvil.fund(await new_mix(), rnd.randrange(2, 6) * ETHER // 10)

    old = adapter.key_address(POOL_PATH)
    try:
        async with background(_keep_mining(anvil)):
            await ensure_first_generation(engine, "ETH", key_ref=POOL_PATH, address=old)

            async def scanning() -> bool:
                async with engine.connect() as conn:
                    return (await conn.execute(select(chain_cursors.c.asset))).first() is not None

            # The first ETH scan (the first with an address to watch) starts a few blocks below
            # the head (EvmAdapter.scan): deposits are made once the scanner holds a cursor.
            first = await new_mix()
            await _until("the worker scanning", scanning, deadline)
            await anvil.fund(first, ETHER // 2)
            await new_mixes(MIXES_BEFORE - 1)
            await _until("a payout signed", lambda: _signed_payouts(engine), deadline)
            kill_and_restart()  # 1: payouts of the old pool in flight
            new = await rotate(engine, "ETH", address_of=adapter.key_address, actor="test")
            await new_mixes(MIXES_AFTER)
            kill_and_restart()  # 2: right after the rotation, before the worker follows it

            async def move_stored() -> bool:
                async with engine.connect() as conn:
                    return bool((await conn.execute(select(func.count()).select_from(pool_moves))).scalar_one())

            await _until("the pool move stored", move_stored, deadline)
            kill_and_restart()  # 3: the move stored, maybe not broadcast

            async def all_done() -> bool:
                async with engine.connect() as conn:
                    states = set((await conn.execute(select(mixes.c.state))).scalars())
                    unfinished = (
                        await conn.execute(select(func.count()).select_from(sends).where(sends.c.state != "confirmed"))
                    ).scalar_one()
                    old_state = (
                        await conn.execute(select(pool_generations.c.state).where(pool_generations.c.generation == 0))
                    ).scalar_one()
                return states == {"completed"} and unfinished == 0 and old_state == "retired"

            try:
                await _until("every mix paid and the old pool retired", all_done, deadline)
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {await _describe(engine)}") from None
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)

    try:
        assert kills == 3
        async with engine.connect() as conn:
            rows = (await conn.execute(select(sends))).all()
            moves = (await conn.execute(select(pool_moves))).all()
            entries = (await conn.execute(select(audit_log).order_by(audit_log.c.id))).all()
            assert await audit.verify(conn) > 0
        payouts = [s for s in rows if s.kind == "payout"]
        assert payouts
        # Every payout exactly once: its own transaction on chain, with its amount and key.
        assert len({p.txid for p in payouts}) == len(payouts)
        paid: Counter[str] = Counter()
        for p in payouts:
            tx = await anvil.rpc("eth_getTransactionByHash", [p.txid])
            assert tx["from"].lower() == p.from_address.lower()
            assert tx["to"].lower() == p.to_address.lower()
            assert int(tx["value"], 16) == int(p.amount)
            paid[p.to_address] += int(p.amount)
        for address, total in paid.items():
            assert await anvil.balance(address) == total  # nothing doubled, nothing lost
        assert {p.from_address for p in payouts} <= {old, new.address}
        assert any(p.from_address == new.address for p in payouts)  # new payouts use the new key
        # The old pool: empty, retired, its key silent after the retirement.
        assert [m.state for m in moves] == ["confirmed"] * len(moves)
        assert moves
        assert await anvil.balance(old) == 0
        retired_at = next(e.id for e in entries if e.action == "pool.retired")
        late = [
            e for e in entries if e.action == "key.used" and e.details["key_ref"] == POOL_PATH and e.id > retired_at
        ]
        assert late == []
        result = await reconcile(rt, Asset.ETH)
        assert result.ok, result.detail()
    finally:
        await rt.aclose()
        await rt.engine.dispose()


async def _signed_payouts(engine: AsyncEngine) -> bool:
    return await _count(engine, sends.c.kind == "payout", sends.c.state != "scheduled") > 0


async def _describe(engine: AsyncEngine) -> str:
    """What is unfinished, for the failure message."""
    async with engine.connect() as conn:
        gens = [(g.generation, g.state) for g in await conn.execute(select(pool_generations))]
        moves = [(m.id, m.state) for m in await conn.execute(select(pool_moves))]
        mix_states = Counter((await conn.execute(select(mixes.c.state))).scalars())
        open_sends = [
            (s.id, s.kind, s.state, s.from_address[:8], s.to_address[:8], s.attempts, s.last_error)
            for s in await conn.execute(select(sends).where(sends.c.state != "confirmed"))
        ]
    return f"generations {gens}, moves {moves}, mixes {dict(mix_states)}, open sends {open_sends[:12]}"
