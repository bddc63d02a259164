"""Bitcoin pool key rotation while mixes are in flight (issue 12), end to end on the bcoin regtest
node with a worker: ``rotate`` in the middle of a run, payouts keep flowing (new change on the new
generation's chain), one stored move takes the old generation's pool coins (and a top-up that
reached the old address late) to the new generation, the old generation retires, its keys are
refused, every payout is on chain exactly once with its amount, and the books reconcile.

:func:`check_rotation_outcome` is shared with the SIGKILL test (tests/test_key_rotation_bitcoin_crash.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.api.routes_admin import pool as admin_pool_report
from mixhouse.app.build import build_runtime
from mixhouse.app.worker import run_worker
from mixhouse.chains.base import PoolCoin
from mixhouse.chains.bitcoin.adapter import BitcoinAdapter
from mixhouse.db.tables import audit_log, deposits, mixes, pool_generations, pool_moves, sends, utxos
from mixhouse.keys.audited import KeyRetired
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.pool_rotation import drain_bitcoin, ensure_first_generation, follow_pool_generations, rotate
from mixhouse.mixer.reconcile import reconcile
from mixhouse.mixer.runtime import Runtime
from mixhouse.money import Asset
from mixhouse.servers import background
from tests.e2e import run_mixhouse
from tests.fixtures.bcoin import Bcoin
from tests.test_e2e_bitcoin import bitcoin_settings, mining

BTC = 100_000_000
DEADLINE = 240.0  # seconds for the whole run: a loaded 2-core machine


async def until(what: str, check: Callable[[], Awaitable[bool]], deadline: float, describe: Any = None) -> None:
    """Return once ``check()`` is true; fail (with ``describe()``'s text) at ``deadline``."""
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    detail = "" if describe is None else f": {await describe()}"
    raise AssertionError(f"not before the deadline: {what}{detail}")


async def rotate_btc(engine: AsyncEngine, adapter: BitcoinAdapter) -> str:
    """What ``mixhouse keys rotate BTC`` does; returns the new generation's address."""
    await ensure_first_generation(
        engine, "BTC", key_ref=adapter.generation_key_ref(0), address=adapter.generation_address(0)
    )
    new = await rotate(
        engine, "BTC", address_of=adapter.generation_ref_address, key_ref_of=adapter.generation_key_ref, actor="test"
    )
    return new.address


async def payouts_signed(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return bool(
            (
                await conn.execute(
                    select(func.count())
                    .select_from(sends)
                    .where(sends.c.kind == "payout", sends.c.state != "scheduled")
                )
            ).scalar_one()
        )


async def move_stored(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return bool((await conn.execute(select(func.count()).select_from(pool_moves))).scalar_one())


async def all_done(engine: AsyncEngine, n_mixes: int) -> bool:
    """Every mix completed, every send confirmed, generation 0 retired."""
    async with engine.connect() as conn:
        states = list((await conn.execute(select(mixes.c.state))).scalars())
        unfinished = (
            await conn.execute(select(func.count()).select_from(sends).where(sends.c.state != "confirmed"))
        ).scalar_one()
        old = (
            await conn.execute(select(pool_generations.c.state).where(pool_generations.c.generation == 0))
        ).scalar_one_or_none()
    return len(states) == n_mixes and set(states) == {"completed"} and unfinished == 0 and old == "retired"


async def describe(engine: AsyncEngine) -> str:
    """What is unfinished, for a failure message."""
    async with engine.connect() as conn:
        gens = [(g.generation, g.state) for g in await conn.execute(select(pool_generations))]
        moves = [(m.id, m.state, m.amount) for m in await conn.execute(select(pool_moves))]
        mix_states = sorted((await conn.execute(select(mixes.c.state))).scalars())
        coins = [
            (c.key_chain, c.state, int(c.amount))
            for c in await conn.execute(select(utxos).where(utxos.c.state != "spent"))
        ]
        open_sends = [
            (s.id, s.state, s.attempts, s.last_error)
            for s in await conn.execute(select(sends).where(sends.c.state != "confirmed"))
        ]
    return f"generations {gens}, moves {moves}, mixes {mix_states}, coins {coins}, open sends {open_sends[:8]}"


async def check_rotation_outcome(rt: Runtime, engine: AsyncEngine, bcoin: Bcoin, *, old: str, new: str) -> None:
    """The end state after a Bitcoin rotation run (both tests).

    Every payout exactly once with its satoshi on chain, no payout spent a deposit of a mix it
    pays; generation 0 retired with no coin left and its address empty on chain; every move
    confirmed on chain, spending only generation 0's pool coins to one output of the new
    generation; change of every payout signed after the rotation on the new chain and no input
    of one from the old chain; no key of generation 0 used after its retirement; the books never
    mismatched during the run and reconcile at the end; the audit chain verifies.
    """
    adapter = rt.adapter(Asset.BTC)
    assert isinstance(adapter, BitcoinAdapter)
    await follow_pool_generations(rt)  # this process's signer learns the retirement (a worker's did)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(sends))).all()
        deps = {d.mix_id: d for d in await conn.execute(select(deposits))}
        moves = (await conn.execute(select(pool_moves).order_by(pool_moves.c.id))).all()
        coins = {(c.txid, c.vout): c for c in await conn.execute(select(utxos))}
        entries = (await conn.execute(select(audit_log).order_by(audit_log.c.id))).all()
        gens = {g.generation: g for g in await conn.execute(select(pool_generations))}
        assert await audit.verify(conn) > 0
    payouts = [s for s in rows if s.kind == "payout"]
    assert payouts
    assert all(s.state == "confirmed" for s in rows)
    expected: dict[str, int] = defaultdict(int)
    for send in payouts:
        expected[send.to_address] += int(send.amount)
    txs = {txid: await bcoin.rpc("getrawtransaction", txid, True) for txid in {p.txid for p in payouts}}
    for txid, tx in txs.items():
        assert tx["confirmations"] >= adapter.confirmations_required
        spent = {f"{vin['txid']}:{vin['vout']}" for vin in tx["vin"]}
        members = {s.mix_id for s in payouts if s.txid == txid}
        assert not spent & {deps[m].chain_ref for m in members}, "a payout spent the deposit of a mix it pays"
    for address, amount in expected.items():
        assert await adapter.balance(address) == amount, f"{address} was paid twice or not at all"
    for dep in deps.values():
        paid = sum(int(s.amount) for s in payouts if s.mix_id == dep.mix_id)
        assert paid == dep.payout_total == dep.amount - dep.fee_amount - dep.network_fee_amount

    # Generation 0: retired, nothing left of it in the books or on its address.
    assert (gens[0].state, gens[1].state) == ("retired", "active")
    assert (gens[0].address, gens[1].address) == (old, new)
    assert [c for c in coins.values() if c.key_chain == 1 and c.state != "spent"] == []
    assert await adapter.balance(old) == 0
    # Every move: confirmed on chain, generation 0's pool coins in, one output to the new address.
    assert moves
    assert all(m.state == "confirmed" for m in moves)
    for m in moves:
        tx = await bcoin.rpc("getrawtransaction", m.txid, True)
        assert tx["confirmations"] >= adapter.confirmations_required
        inputs = [coins[(vin["txid"], vin["vout"])] for vin in tx["vin"]]
        assert all(c.key_chain == 1 and c.owner_mix_id is None and c.state == "spent" for c in inputs)
        [out] = tx["vout"]
        assert out["scriptPubKey"]["address"] == new == m.to_address
        assert round(out["value"] * BTC) == int(m.amount)
        assert int(m.network_fee_paid) == int(m.network_fee_max) == sum(int(c.amount) for c in inputs) - int(m.amount)
        assert coins[(m.txid, 0)].key_chain == 3

    # Payouts signed after the rotation: change on generation 1's chain, no input from generation 0.
    rotated = next(e.id for e in entries if e.action == "pool.rotated")
    retired = next(e.id for e in entries if e.action == "pool.retired")
    after = {e.details["txid"] for e in entries if e.action == "send.signed" and e.id > rotated}
    after_payouts = [txid for txid in after if txid in txs]
    assert after_payouts, "no payout was signed after the rotation"
    for txid in after_payouts:
        for vin in txs[txid]["vin"]:
            assert coins[(vin["txid"], vin["vout"])].key_chain != 1, "a payout after the rotation spent an old coin"
        for (coin_txid, _vout), coin in coins.items():
            if coin_txid == txid:
                assert coin.key_chain == 3, "change after the rotation went to the old generation"
    prefix = adapter.generation_key_ref(0)
    # Each move's keys are audited on the move: generation 0's keys, one entry per key.
    for m in moves:
        used = [
            e for e in entries if e.action == "key.used" and e.entity_type == "pool_move" and e.entity_id == str(m.id)
        ]
        assert used
        assert all(e.details["key_ref"].startswith(prefix) for e in used)
    late = [e for e in entries if e.action == "key.used" and e.details["key_ref"].startswith(prefix) and e.id > retired]
    assert late == []
    # A retired key's signature is refused, before the signer is asked.
    stale = next(c for c in coins.values() if c.key_chain == 1)
    with pytest.raises(KeyRetired):
        await adapter.prepare_single_spend(
            coin=PoolCoin(stale.txid, stale.vout, int(stale.amount), stale.address, 1, int(stale.key_index), None),
            to_address=new,
            amount=int(stale.amount) - 1_000,
        )
    # The admin pool report names the active generation's address (where top-ups go now).
    report = await admin_pool_report(rt)
    assert [(p.asset, p.pool_address) for p in report.pools] == [("BTC", new)]
    # The books balanced all along (the worker reconciles every 2 s), not only at the end.
    mismatches = [e.details for e in entries if e.action == "reconciliation.mismatch"]
    assert mismatches == []
    result = await reconcile(rt, Asset.BTC)
    assert result.ok, result.detail()
    print(
        f"{len(payouts)} payouts in {len(txs)} transactions ({len(after_payouts)} signed after the rotation), "
        f"{len(moves)} pool moves of {sum(int(m.amount) for m in moves)} sat, "
        f"{sum(int(m.network_fee_paid) for m in moves)} sat of fees"
    )


@pytest.mark.timeout(400)
async def test_rotation_while_bitcoin_mixes_are_in_flight(database_url: str, engine: AsyncEngine, bcoin: Bcoin) -> None:
    rt = build_runtime(bitcoin_settings(database_url, bcoin), database_url)
    adapter = rt.adapter(Asset.BTC)
    assert isinstance(adapter, BitcoinAdapter)
    Account.enable_unaudited_hdwallet_features()
    user = Bip84Keyring(Account.create_with_mnemonic()[1], "regtest")
    deadline = time.monotonic() + DEADLINE
    created = 0

    async def new_mixes(count: int, amount: int) -> None:
        nonlocal created
        for _ in range(count):
            addresses = [user.address(0, 10 * created + k) for k in range(1 + created % 2)]
            mix = await create_mix(rt, MixRequest("BTC", addresses, 0, 2))
            await bcoin.fund(mix["deposit_address"], amount + created * 10_000)
            created += 1

    old = adapter.pool_address
    try:
        await new_mixes(3, BTC // 5)
        for _ in range(3):
            await bcoin.fund(old, BTC // 2)  # operator liquidity in generation 0
        async with mining(bcoin), background(run_worker(rt, database_url, concurrency=4)):
            await until("a payout signed", lambda: payouts_signed(engine), deadline)
            new = await rotate_btc(engine, adapter)
            assert new != old
            await new_mixes(3, BTC // 5)
            await until("the pool move stored", lambda: move_stored(engine), deadline, lambda: describe(engine))
            # Late liquidity to the old address: a pool coin of generation 0, moved by a later step.
            late_topup = await bcoin.fund(old, BTC // 10)
            await until(
                "everything paid and generation 0 retired",
                lambda: all_done(engine, 6),
                deadline,
                lambda: describe(engine),
            )
        async with engine.connect() as conn:
            moved = {
                (c.txid, c.vout)
                for c in await conn.execute(select(utxos).where(utxos.c.txid == late_topup, utxos.c.state == "spent"))
            }
        assert moved, "the late top-up to the old generation was not moved"
        await check_rotation_outcome(rt, engine, bcoin, old=old, new=new)
    finally:
        await rt.aclose()
        await rt.engine.dispose()


async def test_keys_rotate_btc_command(database_url: str, engine: AsyncEngine, bcoin: Bcoin) -> None:
    settings = bitcoin_settings(database_url, bcoin)
    env = {
        **os.environ,
        "MIXHOUSE_DATABASE_URL": database_url,
        "MIXHOUSE_JOBCOIN_ENABLED": "false",
        "MIXHOUSE_EVM_ENABLED": "false",
        "MIXHOUSE_BITCOIN_ENABLED": "true",
        "MIXHOUSE_BITCOIN_RPC_URL": bcoin.node.rpc_url,
        "MIXHOUSE_BITCOIN_NETWORK": "regtest",
        "MIXHOUSE_BITCOIN_MNEMONIC": settings.bitcoin_mnemonic.get_secret_value(),
    }

    async def run(*args: str) -> tuple[int, str, str]:
        return await run_mixhouse(env, "keys", "rotate", *args)

    rt = build_runtime(settings, database_url)
    try:
        adapter = rt.adapter(Asset.BTC)
        assert isinstance(adapter, BitcoinAdapter)
        code, out, err = await run("BTC", "--json")
        assert code == 0, err
        rows = json.loads(out)
        assert [(r["generation"], r["state"], r["key_ref"], r["address"]) for r in rows] == [
            (0, "draining", "m/84'/1'/0'/1/", adapter.generation_address(0)),
            (1, "active", "m/84'/1'/1'/1/", adapter.generation_address(1)),
        ]
        assert settings.bitcoin_mnemonic.get_secret_value() not in out + err  # the seed is never printed
        code, out, err = await run("BTC")
        assert code == 2
        assert "still draining" in out + err
        # Nothing to drain (no coin in generation 0): the next worker step retires it.
        assert await drain_bitcoin(engine, adapter) == "retired"
        code, out, err = await run("BTC")
        assert code == 0, err
        assert "generation   2  active" in out
    finally:
        await rt.aclose()
        await rt.engine.dispose()
