"""ERC-20 pool key rotation while USDT mixes are in flight and the worker is SIGKILLed (issue 12).

A real worker process (``python -m mixhouse worker``) on the session's anvil mixes a batch of USDT
deposits (TetherToken's bytecode); the USDT pool key is rotated in the middle (as ``mixhouse keys
rotate USDT`` does), with sweeps into the old pool still unsigned, and the worker is SIGKILLed and
restarted at moments chosen by what has happened: a payout of the old pool in flight, right after
the rotation, the token move stored, the gas move stored, plus two at random moments. At the end
the chain is the judge: every payout is on chain exactly once with its amount, the old pool holds
no token and only the ETH its retirement recorded, exactly one token move and one gas move left
it, every transaction its key ever signed is a recorded send or move, its key is silent after
the retirement, the books reconcile and the audit chain verifies.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.app.build import build_runtime
from mixhouse.chains.evm import EvmAdapter
from mixhouse.chains.evm.token import Erc20Adapter
from mixhouse.db.tables import audit_log, chain_cursors, deposits, mixes, pool_generations, pool_moves, sends
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.pool_rotation import ensure_first_generation, rotate
from mixhouse.mixer.reconcile import reconcile
from mixhouse.money import Asset
from mixhouse.servers import background
from tests.e2e import evm_worker_env, start_worker
from tests.fixtures.anvil import USDT, Anvil, deploy_token, token_transfers
from tests.test_e2e_token import token_settings

ETHER = 10**18
# USDT by another code: a process knows each asset with one contract, and the e2e token test
# runs USDT on a contract of its own in the same session.
SYMBOL = "USDTG"  # G: generations
MIXES_BEFORE = 8  # paid and mixing before the rotation
MIXES_AROUND = 4  # paid just before the rotation: their sweeps into the old pool not yet signed
MIXES_AFTER = 6  # paid after the rotation
TANK = ETHER  # the old pool's gas tank; the new one gets only what the gas move brings
DEADLINE = float(os.environ.get("MIXHOUSE_CRASH_DEADLINE", "360"))  # seconds, the whole run: a loaded 2-core machine


async def _keep_mining(anvil: Anvil) -> None:
    while True:
        await anvil.mine(1)
        await asyncio.sleep(0.2)  # a block interval, not a wait for a result


async def _until(
    engine: AsyncEngine, what: str, check: Callable[[], Awaitable[bool]], deadline: float, every: float = 0.1
) -> None:
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"not before the deadline: {what}: {await _describe(engine)}")


def _worker_env(settings: Any, mnemonic: str) -> dict[str, str]:
    tokens = json.dumps([t.model_dump() for t in settings.evm_tokens])
    return evm_worker_env(
        settings.database_url, settings.evm_rpc_url, settings.evm_chain_id, mnemonic, MIXHOUSE_EVM_TOKENS=tokens
    )


gas = sends.alias("gas")


async def _sends_count(engine: AsyncEngine, *where: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(sends).where(*where))).scalar_one())


async def _moves_of(engine: AsyncEngine, kind: str) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(select(func.count()).select_from(pool_moves).where(pool_moves.c.kind == kind))
            ).scalar_one()
        )


@pytest.mark.timeout(600)
async def test_token_rotation_during_mixes_with_worker_kills(
    database_url: str, engine: AsyncEngine, anvil: Anvil, evm_adapter: EvmAdapter
) -> None:
    started_at = time.monotonic()
    rnd = random.Random(int(os.environ.get("MIXHOUSE_CRASH_SEED", "20261203")))
    world = await deploy_token(anvil, evm_adapter, "usdt")
    since = await anvil.block_number()
    Account.enable_unaudited_hdwallet_features()
    _, mnemonic = Account.create_with_mnemonic()
    settings = token_settings(database_url, anvil, mnemonic, world, SYMBOL)
    rt = build_runtime(settings, database_url)
    token = rt.adapter(SYMBOL)
    assert isinstance(token, Erc20Adapter)
    env = _worker_env(settings, mnemonic)
    deadline = time.monotonic() + DEADLINE
    kills: list[str] = []
    worker: subprocess.Popen[bytes] | None = None

    async def kill_and_restart(moment: str) -> None:
        nonlocal worker
        assert worker is not None
        worker.send_signal(signal.SIGKILL)
        await asyncio.to_thread(worker.wait, 30)
        kills.append(moment)
        worker = start_worker(env)

    async def new_mix(i: int) -> dict[str, Any]:
        to = [token.normalize_address(f"0x{rnd.getrandbits(160):040x}") for _ in range(1 + i % 2)]
        return await create_mix(rt, MixRequest(SYMBOL, to, 0, 3))

    async def pay(mix: dict[str, Any], i: int) -> None:
        await world.pay(mix["deposit_address"], (100 + 10 * i) * USDT)

    first_ref = token.generation_key_ref(0)
    old = token.evm.key_address(first_ref)
    assert old == token.pool_address
    try:
        await anvil.fund(old, TANK)
        # As `mixhouse keys rotate USDT` does before it rotates.
        await ensure_first_generation(engine, SYMBOL, key_ref=first_ref, address=old)
        total = MIXES_BEFORE + MIXES_AROUND + MIXES_AFTER
        made = [await new_mix(i) for i in range(total)]
        async with background(_keep_mining(anvil)):
            worker = start_worker(env)

            async def scanning() -> bool:
                async with engine.connect() as conn:
                    return (
                        await conn.execute(select(chain_cursors).where(chain_cursors.c.asset == SYMBOL))
                    ).first() is not None

            # The deposits arrive once the worker watches the addresses (its first scan keeps a
            # cursor from then on), as they would with a worker always running.
            await _until(engine, "the worker scanning", scanning, deadline)
            for i in range(MIXES_BEFORE):
                await pay(made[i], i)

            async def old_payout_in_flight() -> bool:
                return (
                    await _sends_count(
                        engine,
                        sends.c.kind == "payout",
                        sends.c.from_address == old,
                        sends.c.state.in_(("signed", "broadcast")),
                    )
                    > 0
                )

            await _until(engine, "a payout of the old pool in flight", old_payout_in_flight, deadline, every=0.05)
            await kill_and_restart("old payout in flight")
            await asyncio.sleep(rnd.uniform(1.0, 4.0))  # a random moment, not a wait for a result
            await kill_and_restart("random, before the rotation")

            async def pay_around() -> None:
                for i in range(MIXES_BEFORE, MIXES_BEFORE + MIXES_AROUND):
                    await pay(made[i], i)

            paying = asyncio.create_task(pay_around())

            async def sweep_into_old_without_topup() -> bool:
                async with engine.connect() as conn:
                    waiting = (
                        await conn.execute(
                            select(func.count())
                            .select_from(sends)
                            .where(
                                sends.c.kind == "sweep",
                                sends.c.to_address == old,
                                ~select(gas.c.id)
                                .where(gas.c.kind == "gas", gas.c.deposit_id == sends.c.deposit_id)
                                .exists(),
                            )
                        )
                    ).scalar_one()
                return bool(waiting)

            # A deposit accepted just before the rotation: its sweep into the old pool is stored,
            # its gas top-up not yet. The worker is frozen there, the pool rotates, and the
            # worker is killed before it can follow the rotation: the next one meets a sweep
            # into the old pool whose gas the new pool's empty tank cannot pay.
            await _until(
                engine, "a sweep into the old pool without its top-up", sweep_into_old_without_topup, deadline, 0.02
            )
            assert worker is not None
            worker.send_signal(signal.SIGSTOP)
            new = await rotate(
                engine, SYMBOL, address_of=token.evm.key_address, key_ref_of=token.generation_key_ref, actor="test"
            )
            await kill_and_restart("right after the rotation, a sweep into the old pool without its top-up")
            await paying
            for i in range(MIXES_BEFORE + MIXES_AROUND, total):
                await pay(made[i], i)

            await _until(engine, "the token move stored", lambda: _has_move(engine, "pool"), deadline, every=0.05)
            await kill_and_restart("token move stored")
            await _until(engine, "the gas move stored", lambda: _has_move(engine, "gas"), deadline, every=0.05)
            await kill_and_restart("gas move stored")
            await asyncio.sleep(rnd.uniform(0.5, 3.0))  # a random moment, not a wait for a result
            await kill_and_restart("random, after the gas move")

            async def all_done() -> bool:
                async with engine.connect() as conn:
                    states = list((await conn.execute(select(mixes.c.state))).scalars())
                    unfinished = (
                        await conn.execute(select(func.count()).select_from(sends).where(sends.c.state != "confirmed"))
                    ).scalar_one()
                    moving = (
                        await conn.execute(
                            select(func.count()).select_from(pool_moves).where(pool_moves.c.state != "confirmed")
                        )
                    ).scalar_one()
                    old_state = (
                        await conn.execute(
                            select(pool_generations.c.state).where(
                                pool_generations.c.asset == SYMBOL, pool_generations.c.generation == 0
                            )
                        )
                    ).scalar_one()
                return (
                    len(states) == total
                    and set(states) == {"completed"}
                    and unfinished == 0
                    and moving == 0
                    and old_state == "retired"
                )

            await _until(engine, "every mix paid and the old pool retired", all_done, deadline, every=0.25)
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGKILL)
            await asyncio.to_thread(worker.wait, 30)

    try:
        assert len(kills) == 6, kills
        async with engine.connect() as conn:
            rows = (await conn.execute(select(sends).where(sends.c.asset == SYMBOL))).all()
            deps = (await conn.execute(select(deposits).where(deposits.c.asset == SYMBOL))).all()
            moves = (await conn.execute(select(pool_moves).order_by(pool_moves.c.id))).all()
            entries = (await conn.execute(select(audit_log).order_by(audit_log.c.id))).all()
            gens = (await conn.execute(select(pool_generations).where(pool_generations.c.asset == SYMBOL))).all()
            assert await audit.verify(conn) > 0
        assert len(deps) == total
        payouts = [s for s in rows if s.kind == "payout"]
        sweeps = [s for s in rows if s.kind == "sweep"]
        topups = [s for s in rows if s.kind == "gas"]
        assert payouts
        assert {p.from_address for p in payouts} <= {old, new.address}
        assert any(p.from_address == old for p in payouts)
        assert any(p.from_address == new.address for p in payouts)  # new payouts use the new key
        assert {s.to_address for s in sweeps} <= {old, new.address}
        # Every payout exactly once: its own transaction, none doubled or lost.
        assert len({p.txid for p in payouts}) == len(payouts)
        # Exactly one token move and one gas move. Only a token or ETH credit reaching the old
        # address after its gas move could call for another, and nothing here sends it any: every
        # sweep into it and every top-up from it finished before the first move was signed.
        token_moves = [m for m in moves if m.kind == "pool"]
        gas_moves = [m for m in moves if m.kind == "gas"]
        assert len(token_moves) == len(gas_moves) == 1, [(m.id, m.kind, m.amount) for m in moves]
        token_move, gas_move = token_moves[0], gas_moves[0]
        assert [m.state for m in moves] == ["confirmed", "confirmed"]
        assert token_move.id < gas_move.id
        assert (token_move.from_address, token_move.to_address) == (old, new.address)
        assert (gas_move.from_address, gas_move.to_address) == (old, new.address)
        # The token move carried the old pool's whole book balance: its sweeps less its payouts.
        assert int(token_move.amount) == sum(int(s.amount) for s in sweeps if s.to_address == old) - sum(
            int(p.amount) for p in payouts if p.from_address == old
        )
        # The chain's token logs out of each pool are exactly its payouts (and the one move).
        from_old = Counter((p.to_address, int(p.amount)) for p in payouts if p.from_address == old)
        from_old[(new.address, int(token_move.amount))] += 1
        assert await token_transfers(token, side=1, address=old, since=since) == from_old
        assert await token_transfers(token, side=1, address=new.address, since=since) == Counter(
            (p.to_address, int(p.amount)) for p in payouts if p.from_address == new.address
        )
        into_new = Counter((s.from_address, int(s.amount)) for s in sweeps if s.to_address == new.address)
        into_new[(old, int(token_move.amount))] += 1
        assert await token_transfers(token, side=2, address=new.address, since=since) == into_new
        # Each withdrawal address received exactly what its mix owed it.
        owed: Counter[str] = Counter()
        for p in payouts:
            owed[p.to_address] += int(p.amount)
        for mix in made:
            for address in mix["withdrawal_addresses"]:
                assert await token.balance(address) == owed[address] > 0
        # Every transaction the old key ever signed is a recorded send or one of the two moves,
        # and its ETH went exactly where they say: the tank is fully accounted for.
        from_old_sends = [s for s in rows if s.from_address == old]
        old_nonces = sorted([int(s.nonce) for s in from_old_sends] + [int(m.nonce) for m in moves])
        assert old_nonces == list(range(await token.next_nonce(old)))
        spent = 0
        for txid, value in [(s.txid, int(s.amount) if s.kind == "gas" else 0) for s in from_old_sends] + [
            (token_move.txid, 0),
            (gas_move.txid, int(gas_move.amount)),
        ]:
            paid = await token.gas_paid(str(txid))
            assert paid is not None
            spent += value + paid
        assert int(gas_move.network_fee_paid) == await token.gas_paid(str(gas_move.txid))
        eth_left = await token.gas_balance(old)
        assert spent + eth_left == TANK
        # The old generation: retired, no token left, ETH below one transfer's fee (recorded).
        assert await token.balance(old) == 0
        retired = [e for e in entries if e.action == "pool.retired" and e.entity_id == f"{SYMBOL}/0"]
        assert len(retired) == 1
        # What it holds is exactly the ETH its retirement recorded as left behind (here none: the
        # gas move took the balance less its own fee, which it paid exactly at its signed price).
        assert eth_left == int(retired[0].details["gas_left_wei"])
        assert any(e.action == "key.used" and e.details.get("key_ref") == first_ref for e in entries)
        late = [
            e
            for e in entries
            if e.action == "key.used" and e.details.get("key_ref") == first_ref and e.id > retired[0].id
        ]
        assert late == []
        result = await reconcile(rt, Asset(SYMBOL))
        assert result.ok, result.detail()
        # Each sweep's gas was paid by the tank of the generation it pays into (mixer/gas.py),
        # also for the sweeps into the old pool topped up after the rotation, which this run made.
        draining_at = next(g.draining_at for g in gens if g.generation == 0)
        for g in topups:
            assert g.from_address == next(s.to_address for s in sweeps if s.deposit_id == g.deposit_id)
        late_topups = [g for g in topups if g.from_address == old and g.signed_at > draining_at]
        assert late_topups, "no sweep into the old pool was topped up after the rotation"
        from_old_count = sum(p.from_address == old for p in payouts)
        move_gas = await token.gas_paid(str(token_move.txid))
        print(
            f"\nmixes {total}, payouts {len(payouts)} ({from_old_count} from the old pool), sweeps {len(sweeps)},"
            f" top-ups {len(topups)} ({len(late_topups)} from the old pool after the rotation),"
            f" kills {len(kills)}: {kills}\n"
            f"token move {int(token_move.amount)} base units (gas {move_gas} wei),"
            f" gas move {int(gas_move.amount)} wei (fee {int(gas_move.network_fee_paid)} wei),"
            f" ETH left {eth_left} wei, wall time {time.monotonic() - started_at:.1f} s"
        )
    finally:
        await rt.aclose()
        await rt.engine.dispose()


async def _has_move(engine: AsyncEngine, kind: str) -> bool:
    return await _moves_of(engine, kind) > 0


async def _describe(engine: AsyncEngine) -> str:
    """What is unfinished, for the failure message."""
    async with engine.connect() as conn:
        gens = [(g.asset, g.generation, g.state) for g in await conn.execute(select(pool_generations))]
        moves = [(m.id, m.kind, m.state, int(m.amount)) for m in await conn.execute(select(pool_moves))]
        mix_states = Counter((await conn.execute(select(mixes.c.state))).scalars())
        open_sends = [
            (s.id, s.kind, s.state, s.from_address[:8], s.to_address[:8], s.attempts, s.last_error)
            for s in await conn.execute(select(sends).where(sends.c.state != "confirmed"))
        ]
    return f"generations {gens}, moves {moves}, mixes {dict(mix_states)}, open sends {open_sends[:12]}"
