"""drain_bitcoin step by step (issue 12) on real PostgreSQL and the bcoin regtest node: it waits
while a send holds a coin of the draining generation, then one move takes every pool coin of it
(never a mix's deposit) with its inputs spent and its output a new-generation coin in the same
transaction; the move confirms, the generation retires and its keys are refused; coins that do
not pay the fee are "dust"; a process SIGKILLed between storing and broadcasting the move leaves
the same bytes for the next step to send.

Each test has its own seed phrase, so its pool addresses are its own on the session's node.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.chains.base import PoolCoin
from mixhouse.chains.bitcoin.adapter import BitcoinAdapter
from mixhouse.db.tables import audit_log, pool_generations, pool_moves, utxos
from mixhouse.keys.audited import AuditedSigner, KeyRetired, RetiredKeyGuard
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.keys.keystore import fresh_mnemonic
from mixhouse.keys.signer import SoftwareSigner
from mixhouse.mixer.pool_rotation import drain_bitcoin, ensure_first_generation, rotate
from tests.fixtures.bcoin import Bcoin

DEADLINE = 120.0  # seconds: a loaded 2-core machine


@pytest.fixture
def mnemonic() -> str:
    return fresh_mnemonic(12)


@pytest.fixture
def guard(mnemonic: str) -> RetiredKeyGuard:
    # As the runtime builds it: every signature audited, a retired key refused before.
    return RetiredKeyGuard(AuditedSigner(SoftwareSigner.for_bip84(Bip84Keyring(mnemonic, "regtest"))))


@pytest_asyncio.fixture
async def adapter(bcoin: Bcoin, guard: RetiredKeyGuard) -> AsyncIterator[BitcoinAdapter]:
    chain = BitcoinAdapter(bcoin.client(), network="regtest", signer=guard, confirmations=2)
    try:
        yield chain
    finally:
        await chain.aclose()


async def _pool_coin(
    engine: AsyncEngine, bcoin: Bcoin, address: str, sat: int, *, key_index: int, owner: str | None = None
) -> tuple[str, int]:
    """Pay ``sat`` to ``address`` on chain and record it as an available coin of chain 1
    (or chain 0, a mix's deposit, with ``owner``)."""
    txid = await bcoin.fund(address, sat)
    tx = await bcoin.rpc("getrawtransaction", txid, True)
    vout = next(int(o["n"]) for o in tx["vout"] if o["scriptPubKey"].get("address") == address)
    async with engine.begin() as conn:
        await conn.execute(
            utxos.insert().values(
                asset="BTC",
                txid=txid,
                vout=vout,
                address=address,
                key_chain=1 if owner is None else 0,
                key_index=key_index,
                amount=sat,
                owner_mix_id=owner,
                state="available",
            )
        )
    return txid, vout


async def _rotated(engine: AsyncEngine, adapter: BitcoinAdapter) -> str:
    await ensure_first_generation(
        engine, "BTC", key_ref=adapter.generation_key_ref(0), address=adapter.generation_address(0)
    )
    new = await rotate(engine, "BTC", address_of=adapter.generation_ref_address, key_ref_of=adapter.generation_key_ref)
    return new.address


async def _drain_until(
    engine: AsyncEngine, adapter: BitcoinAdapter, bcoin: Bcoin, guard: RetiredKeyGuard, want: str
) -> list[str]:
    steps: list[str] = []
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        step = await drain_bitcoin(engine, adapter, guard)
        steps.append(step)
        if step == want:
            return steps
        await bcoin.mine(1)
    raise AssertionError(f"no {want!r} before the deadline: {steps}")


async def test_the_drain_waits_for_a_send_then_moves_every_pool_coin_and_retires(
    engine: AsyncEngine, adapter: BitcoinAdapter, bcoin: Bcoin, guard: RetiredKeyGuard
) -> None:
    old = adapter.generation_address(0)
    first = await _pool_coin(engine, bcoin, old, 300_000, key_index=0)
    second = await _pool_coin(engine, bcoin, adapter.change_address(5), 200_000, key_index=5)
    deposit = await _pool_coin(engine, bcoin, adapter.deposit_address(0), 150_000, key_index=0, owner="mix-x")
    await bcoin.mine(1)
    assert await drain_bitcoin(engine, adapter, guard) == "idle"
    new = await _rotated(engine, adapter)

    # A send holds one of the old coins: the drain waits for it.
    async with engine.begin() as conn:
        await conn.execute(update(utxos).where(utxos.c.txid == second[0]).values(state="reserved"))
    assert await drain_bitcoin(engine, adapter, guard) == "waiting"
    async with engine.begin() as conn:
        await conn.execute(update(utxos).where(utxos.c.txid == second[0]).values(state="available"))

    step = await drain_bitcoin(engine, adapter, guard)
    assert step in {"signed", "broadcast"}
    async with engine.connect() as conn:
        (move,) = (await conn.execute(select(pool_moves))).all()
        coins = {(c.txid, c.vout): c for c in await conn.execute(select(utxos))}
    assert coins[first].state == coins[second].state == "spent"
    assert coins[deposit].state == "available"  # a mix's deposit is never moved
    out = coins[(move.txid, 0)]
    assert (out.key_chain, out.key_index, out.address, out.state) == (3, 0, new, "unconfirmed")
    assert int(out.amount) == int(move.amount) == 500_000 - int(move.network_fee_max)
    tx = await bcoin.rpc("getrawtransaction", move.txid, True)
    assert {(v["txid"], v["vout"]) for v in tx["vin"]} == {first, second}

    steps = await _drain_until(engine, adapter, bcoin, guard, "retired")
    assert "confirmed" in steps
    async with engine.connect() as conn:
        (move,) = (await conn.execute(select(pool_moves))).all()
        out = (await conn.execute(select(utxos).where(utxos.c.txid == move.txid))).one()
        gens = sorted((g.generation, g.state) for g in await conn.execute(select(pool_generations)))
        actions = [e.action for e in await conn.execute(select(audit_log).order_by(audit_log.c.id))]
        assert await audit.verify(conn) > 0
    assert move.state == "confirmed"
    assert int(move.network_fee_paid) == int(move.network_fee_max)
    assert out.state == "available"
    assert gens == [(0, "retired"), (1, "active")]
    assert await adapter.balance(old) == 0
    assert await adapter.balance(new) == int(move.amount)
    for action in ("pool.rotated", "key.used", "pool.move_signed", "pool.move_confirmed", "pool.retired"):
        assert action in actions
    assert actions.index("pool.move_signed") < actions.index("pool.move_broadcast")
    # Retired: every key of generation 0's chain is refused, the new generation's still signs.
    stray = PoolCoin(first[0], first[1], 300_000, old, 1, 0, None)
    with pytest.raises(KeyRetired):
        await adapter.prepare_single_spend(coin=stray, to_address=new, amount=290_000)
    fresh = PoolCoin(move.txid, 0, int(move.amount), new, 3, 0, None)
    assert (await adapter.prepare_single_spend(coin=fresh, to_address=old, amount=400_000)).txid
    assert await drain_bitcoin(engine, adapter, guard) == "idle"


async def test_coins_that_do_not_pay_the_move_are_dust(
    engine: AsyncEngine, adapter: BitcoinAdapter, guard: RetiredKeyGuard
) -> None:
    await _rotated(engine, adapter)
    async with engine.begin() as conn:
        await conn.execute(
            utxos.insert().values(
                asset="BTC",
                txid="ab" * 32,
                vout=0,
                address=adapter.generation_address(0),
                key_chain=1,
                key_index=0,
                amount=600,
                owner_mix_id=None,
                state="available",
            )
        )
    assert await drain_bitcoin(engine, adapter, guard) == "dust"
    async with engine.connect() as conn:
        assert (await conn.execute(select(pool_moves))).first() is None
        assert (await conn.execute(select(utxos.c.state))).scalar_one() == "available"


_CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from sqlalchemy.ext.asyncio import create_async_engine
    from mixhouse.chains.bitcoin.adapter import BitcoinAdapter
    from mixhouse.chains.bitcoin.rpc import BitcoinRpc
    from mixhouse.keys.bip84 import Bip84Keyring
    from mixhouse.keys.signer import SoftwareSigner
    from mixhouse.mixer.pool_rotation import RetiredKeyGuard, drain_bitcoin

    async def main() -> None:
        url, rpc, user, password = sys.argv[1:5]
        guard = RetiredKeyGuard(SoftwareSigner.for_bip84(Bip84Keyring(sys.stdin.read().strip(), "regtest")))
        adapter = BitcoinAdapter(
            BitcoinRpc(rpc, user=user, password=password), network="regtest", signer=guard, confirmations=2
        )

        async def killed(prepared: object) -> None:
            os.kill(os.getpid(), signal.SIGKILL)  # after the move is stored, before it leaves

        adapter.broadcast = killed  # type: ignore[method-assign]
        await drain_bitcoin(create_async_engine(url), adapter, guard)

    asyncio.run(main())
    """
)


async def test_a_process_killed_between_storing_and_broadcasting_the_move_sends_the_same_bytes(
    engine: AsyncEngine, adapter: BitcoinAdapter, bcoin: Bcoin, guard: RetiredKeyGuard, mnemonic: str
) -> None:
    old = adapter.generation_address(0)
    coin = await _pool_coin(engine, bcoin, old, 400_000, key_index=0)
    await bcoin.mine(1)
    new = await _rotated(engine, adapter)
    url = engine.url.render_as_string(hide_password=False)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        url,
        bcoin.node.rpc_url,
        bcoin.node.rpc_user,
        bcoin.node.rpc_password,
        stdin=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    _, stderr = await asyncio.wait_for(child.communicate(mnemonic.encode()), DEADLINE)
    assert child.returncode == -9, stderr.decode()[-2000:]
    async with engine.connect() as conn:
        (stored,) = (await conn.execute(select(pool_moves))).all()
        spent = (await conn.execute(select(utxos.c.state).where(utxos.c.txid == coin[0]))).scalar_one()
    assert stored.state == "signed"
    assert spent == "spent"  # stored with the move, before it left
    assert stored.txid not in await bcoin.rpc("getrawmempool")  # it never left

    await _drain_until(engine, adapter, bcoin, guard, "retired")
    async with engine.connect() as conn:
        (move,) = (await conn.execute(select(pool_moves))).all()
    assert (move.id, move.txid, bytes(move.raw_tx)) == (stored.id, stored.txid, bytes(stored.raw_tx))
    assert move.state == "confirmed"
    assert await adapter.balance(old) == 0
    assert await adapter.balance(new) == int(move.amount)
