"""Pool key rotation (mixhouse.mixer.pool_rotation) on real PostgreSQL and a real anvil node.

Each test has its own seed phrase, so its pool addresses are its own on the session's anvil.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.chains.evm.adapter import EvmAdapter
from mixhouse.db.tables import audit_log, pool_generations, pool_moves
from mixhouse.keys.audited import AuditedSigner
from mixhouse.keys.hd import POOL_PATH, HdKeyring
from mixhouse.keys.keystore import fresh_mnemonic
from mixhouse.keys.signer import SoftwareSigner
from mixhouse.mixer.pool_rotation import (
    KeyRetired,
    RetiredKeyGuard,
    RotationError,
    drain_evm,
    ensure_first_generation,
    evm_pool_key_ref,
    generations,
    rotate,
)
from tests.e2e import run_mixhouse
from tests.fixtures.anvil import Anvil

FUNDS = 3 * 10**18
ADMIN_KEY = "rotation-test-admin-key-0123456789"
DEADLINE = 120.0  # seconds: generous, a loaded 2-core machine


@pytest.fixture
def mnemonic() -> str:
    return fresh_mnemonic(12)


def _adapter(anvil: Anvil, mnemonic: str, guard: RetiredKeyGuard) -> EvmAdapter:
    return EvmAdapter(
        anvil.rpc_url, chain_id=anvil.chain_id, signer=guard, confirmations=3, max_fee_per_gas_cap=500 * 10**9
    )


@pytest.fixture
def guard(mnemonic: str) -> RetiredKeyGuard:
    # As the runtime builds it: every signature audited, a retired key refused before.
    return RetiredKeyGuard(AuditedSigner(SoftwareSigner.for_evm(HdKeyring(mnemonic))))


@pytest_asyncio.fixture
async def adapter(anvil: Anvil, mnemonic: str, guard: RetiredKeyGuard) -> AsyncIterator[EvmAdapter]:
    chain = _adapter(anvil, mnemonic, guard)
    try:
        yield chain
    finally:
        await chain.aclose()


async def _drain_until(
    engine: AsyncEngine, adapter: EvmAdapter, anvil: Anvil, guard: RetiredKeyGuard, want: str
) -> list[str]:
    steps: list[str] = []
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        step = await drain_evm(engine, adapter, guard)
        steps.append(step)
        if step == want:
            return steps
        if step == "broadcast":
            await anvil.mine(1)
    raise AssertionError(f"no {want!r} before the deadline: {steps}")


async def _actions(engine: AsyncEngine) -> list[tuple[str, dict[str, object]]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(audit_log.c.action, audit_log.c.details).order_by(audit_log.c.id))
        return [(r.action, dict(r.details or {})) for r in rows]


async def test_rotation_moves_the_old_pool_to_the_new_key_and_retires_it(
    engine: AsyncEngine, adapter: EvmAdapter, anvil: Anvil, guard: RetiredKeyGuard
) -> None:
    old = adapter.key_address(POOL_PATH)
    await ensure_first_generation(engine, "ETH", key_ref=POOL_PATH, address=old)
    await anvil.fund(old, FUNDS)

    new = await rotate(engine, "ETH", address_of=adapter.key_address)
    assert (new.generation, new.key_ref, new.state) == (1, evm_pool_key_ref(1), "active")
    assert new.address != old
    with pytest.raises(RotationError, match="still draining"):
        await rotate(engine, "ETH", address_of=adapter.key_address)

    await _drain_until(engine, adapter, anvil, guard, "retired")

    async with engine.connect() as conn:
        states = [(g.generation, g.state) for g in await generations(conn, "ETH")]
        moves = (await conn.execute(select(pool_moves))).all()
        assert await audit.verify(conn) >= 0
    assert states == [(0, "retired"), (1, "active")]
    assert len(moves) == 1
    (move,) = moves
    assert move.state == "confirmed"
    assert await anvil.balance(old) == 0
    # Every wei of the old pool is at the new key or paid as the move's fee.
    assert await anvil.balance(new.address) == FUNDS - int(move.network_fee_paid)
    assert int(move.amount) + int(move.network_fee_paid) == FUNDS

    actions = await _actions(engine)
    names = [a for a, _ in actions]
    for wanted in ("pool.rotated", "pool.move_signed", "pool.move_broadcast", "pool.move_confirmed", "pool.retired"):
        assert names.count(wanted) == 1, (wanted, names)
    used = [d for a, d in actions if a == "key.used"]
    assert [(d["key_ref"], d["purpose"]) for d in used] == [(POOL_PATH, "pool_move")]

    # The retired key is refused by the signer path, before any signature is made.
    with pytest.raises(KeyRetired):
        guard.sign_digest(POOL_PATH, b"\x01" * 32)
    guard.sign_digest(new.key_ref, b"\x01" * 32)  # the active key still signs
    assert await drain_evm(engine, adapter, guard) == "idle"


async def test_two_rotations_at_once_make_one_generation(engine: AsyncEngine, adapter: EvmAdapter) -> None:
    await ensure_first_generation(engine, "ETH", key_ref=POOL_PATH, address=adapter.key_address(POOL_PATH))
    results = await asyncio.gather(
        *(rotate(engine, "ETH", address_of=adapter.key_address) for _ in range(4)), return_exceptions=True
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(won) == 1
    assert all(isinstance(r, RotationError) for r in results if isinstance(r, BaseException))
    async with engine.connect() as conn:
        rows = (await conn.execute(select(pool_generations.c.state).order_by(pool_generations.c.generation))).all()
    assert [r.state for r in rows] == ["draining", "active"]


async def test_rotating_an_asset_without_pool_generations_is_refused_not_half_done(engine: AsyncEngine) -> None:
    # ETH and BTC rotate (tests/test_key_rotation_bitcoin.py); a Jobcoin pool is one account.
    with pytest.raises(RotationError, match="not implemented"):
        await rotate(engine, "JOBCOIN", address_of=str)
    async with engine.connect() as conn:
        assert (await conn.execute(select(pool_generations))).all() == []


_CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from sqlalchemy.ext.asyncio import create_async_engine
    from mixhouse.chains.evm.adapter import EvmAdapter
    from mixhouse.keys.hd import HdKeyring
    from mixhouse.mixer.pool_rotation import RetiredKeyGuard, drain_evm
    from mixhouse.keys.signer import SoftwareSigner

    async def main() -> None:
        url, rpc, chain_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
        guard = RetiredKeyGuard(SoftwareSigner.for_evm(HdKeyring(sys.stdin.read().strip())))
        adapter = EvmAdapter(rpc, chain_id=chain_id, signer=guard, confirmations=3, max_fee_per_gas_cap=500 * 10**9)

        async def killed(prepared: object) -> None:
            os.kill(os.getpid(), signal.SIGKILL)  # after the move is stored, before it leaves

        adapter.broadcast = killed  # type: ignore[method-assign]
        engine = create_async_engine(url)
        await drain_evm(engine, adapter, guard)

    asyncio.run(main())
    """
)


async def test_a_worker_killed_between_storing_and_broadcasting_the_move_sends_the_same_bytes(
    engine: AsyncEngine, database_url: str, adapter: EvmAdapter, anvil: Anvil, guard: RetiredKeyGuard, mnemonic: str
) -> None:
    old = adapter.key_address(POOL_PATH)
    await ensure_first_generation(engine, "ETH", key_ref=POOL_PATH, address=old)
    await anvil.fund(old, FUNDS)
    new = await rotate(engine, "ETH", address_of=adapter.key_address)

    url = engine.url.render_as_string(hide_password=False)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        url,
        anvil.rpc_url,
        str(anvil.chain_id),
        stdin=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    _, stderr = await asyncio.wait_for(child.communicate(mnemonic.encode()), DEADLINE)
    assert child.returncode == -9, stderr.decode()[-2000:]
    async with engine.connect() as conn:
        (stored,) = (await conn.execute(select(pool_moves))).all()
    assert stored.state == "signed"
    assert await anvil.rpc("eth_getTransactionByHash", [stored.txid]) is None  # it never left

    await _drain_until(engine, adapter, anvil, guard, "retired")
    async with engine.connect() as conn:
        (move,) = (await conn.execute(select(pool_moves))).all()
        assert await audit.verify(conn) >= 0
    assert (move.id, move.txid, bytes(move.raw_tx)) == (stored.id, stored.txid, bytes(stored.raw_tx))
    assert move.state == "confirmed"
    assert await anvil.balance(old) == 0
    assert await anvil.balance(new.address) == int(move.amount)


async def test_reconciliation_counts_every_generation_and_the_move_fee(
    database_url: str, engine: AsyncEngine, anvil: Anvil, mnemonic: str
) -> None:
    from mixhouse.api.app import create_app  # noqa: PLC0415
    from mixhouse.app.build import build_runtime  # noqa: PLC0415
    from mixhouse.mixer.reconcile import reconcile  # noqa: PLC0415 - the runtime's imports are slow
    from mixhouse.money import Asset  # noqa: PLC0415
    from tests.e2e import fast_settings  # noqa: PLC0415

    settings = fast_settings(
        database_url,
        jobcoin_enabled=False,
        evm_enabled=True,
        evm_rpc_url=anvil.rpc_url,
        evm_chain_id=anvil.chain_id,
        evm_mnemonic=mnemonic,
        evm_confirmations=3,
        admin_api_key=SecretStr(ADMIN_KEY),
    )
    rt = build_runtime(settings, database_url)
    try:
        chain = rt.adapter(Asset.ETH)
        assert isinstance(chain, EvmAdapter)
        guard = RetiredKeyGuard(rt.signers[Asset.ETH])
        old = chain.pool_address
        await ensure_first_generation(engine, "ETH", key_ref=POOL_PATH, address=old)
        # Liquidity put in by the operator: outside the books, so a surplus of exactly FUNDS.
        await anvil.fund(old, FUNDS)
        before = await reconcile(rt, Asset.ETH)
        assert (before.books, before.actual) == (0, FUNDS)

        await rotate(engine, "ETH", address_of=chain.key_address)
        await _drain_until(engine, chain, anvil, guard, "retired")
        after = await reconcile(rt, Asset.ETH)
        async with engine.connect() as conn:
            (move,) = (await conn.execute(select(pool_moves))).all()
        fee = int(move.network_fee_paid)
        assert fee > 0
        # The new key's balance is counted and the move's fee is in the books: the same surplus.
        assert (after.books, after.actual) == (-fee, FUNDS - fee)
        assert (after.low, after.high) == (-fee, -fee)
        # The admin API's books agree, and name the new generation's address as the pool.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt)), base_url="http://t") as http:
            answer = await http.get("/api/v1/admin/pool", headers={"X-API-Key": ADMIN_KEY})
        (pool,) = answer.json()["pools"]
        assert (pool["books"], pool["pool_address"]) == (str(-fee), chain.key_address(evm_pool_key_ref(1)))
    finally:
        await rt.aclose()
        await rt.engine.dispose()


async def test_keys_rotate_command(database_url: str, engine: AsyncEngine, anvil: Anvil, mnemonic: str) -> None:
    env = {
        **os.environ,
        "MIXHOUSE_DATABASE_URL": database_url,
        "MIXHOUSE_JOBCOIN_ENABLED": "false",
        "MIXHOUSE_EVM_ENABLED": "true",
        "MIXHOUSE_EVM_RPC_URL": anvil.rpc_url,
        "MIXHOUSE_EVM_CHAIN_ID": str(anvil.chain_id),
        "MIXHOUSE_EVM_MNEMONIC": mnemonic,
    }

    async def run(*args: str) -> tuple[int, str, str]:
        return await run_mixhouse(env, "keys", *args, within=DEADLINE)

    code, out, err = await run("rotate", "ETH", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["generation"], r["state"], r["key_ref"]) for r in rows] == [
        (0, "draining", POOL_PATH),
        (1, "active", evm_pool_key_ref(1)),
    ]
    assert mnemonic not in out + err  # the seed phrase is never printed
    code, out, err = await run("rotate", "ETH")
    assert code == 2
    assert "still draining" in out + err
    code, out, err = await run("rotate", "BTC")
    assert code == 2


async def test_retirement_waits_for_a_send_into_the_old_pool_and_then_no_send_may_touch_it(
    engine: AsyncEngine, adapter: EvmAdapter, guard: RetiredKeyGuard
) -> None:
    from sqlalchemy.exc import DBAPIError  # noqa: PLC0415

    from mixhouse.db.tables import deposits, sends  # noqa: PLC0415
    from tests.test_states import T0, _insert_mix  # noqa: PLC0415

    old = adapter.key_address(POOL_PATH)
    await ensure_first_generation(engine, "ETH", key_ref=POOL_PATH, address=old)
    await _insert_mix(engine)
    async with engine.begin() as conn:
        dep_id = (
            await conn.execute(
                deposits.insert()
                .values(
                    mix_id="mix-1",
                    asset="ETH",
                    chain_ref="0xdeposit#0",
                    deposit_address="deposit-address-of-mix-1",
                    from_addresses=["0x" + "33" * 20],
                    amount=10**17,
                    state="sweeping",
                )
                .returning(deposits.c.id)
            )
        ).scalar_one()
    sweep = {
        "kind": "sweep",
        "asset": "ETH",
        "mix_id": "mix-1",
        "deposit_id": dep_id,
        "from_address": "deposit-address-of-mix-1",
        "from_key_index": 1,
        "to_address": old,
        "amount": 10**17,
        "due_at": T0,
    }
    async with engine.begin() as conn:
        # Stored by a worker before the rotation, not yet confirmed.
        send_id = (
            await conn.execute(sends.insert().values(state="signed", **sweep).returning(sends.c.id))
        ).scalar_one()
    await rotate(engine, "ETH", address_of=adapter.key_address)
    assert await drain_evm(engine, adapter, guard) == "waiting"
    assert await drain_evm(engine, adapter, guard) == "waiting"
    async with engine.begin() as conn:
        await conn.execute(sends.update().where(sends.c.id == send_id).values(state="confirmed"))
    # (The old address holds nothing on this chain: the sweep above is only rows.)
    assert await drain_evm(engine, adapter, guard) == "retired"
    # A worker still pointing at the old pool cannot store a send into it any more.
    with pytest.raises(DBAPIError, match="retired pool key"):
        async with engine.begin() as conn:
            await conn.execute(sends.insert().values(state="scheduled", **sweep))
