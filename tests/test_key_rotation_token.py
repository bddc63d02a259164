"""ERC-20 pool key rotation (mixhouse.mixer.pool_rotation.drain_token) on real PostgreSQL and a
real anvil node, with USDT's own TetherToken bytecode.

A token pool's address holds two balances, the tokens and the ETH gas tank: the drain moves
the tokens, then the ETH less its move's fee, and retires the old key. Each test has its own
seed phrase, so its pool addresses are its own on the session's anvil.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.chains.evm.adapter import EvmAdapter
from mixhouse.chains.evm.token import Erc20Adapter
from mixhouse.db.tables import account_nonces, audit_log, pool_moves
from mixhouse.keys.audited import AuditedSigner
from mixhouse.keys.hd import HdKeyring
from mixhouse.keys.keystore import fresh_mnemonic
from mixhouse.keys.signer import SoftwareSigner
from mixhouse.mixer.pool_rotation import (
    KeyRetired,
    PoolGeneration,
    RetiredKeyGuard,
    drain_token,
    ensure_first_generation,
    generations,
    rotate,
)
from tests.e2e import run_mixhouse
from tests.fixtures.anvil import USDT, Anvil, TokenWorld, deploy_token

TOKENS = 5_000 * USDT
GAS_TANK = 10**17  # wei
DEADLINE = 120.0  # seconds: generous, a loaded 2-core machine


@pytest.fixture
def mnemonic() -> str:
    return fresh_mnemonic(12)


@pytest.fixture
def guard(mnemonic: str) -> RetiredKeyGuard:
    # As the runtime builds it: every signature audited, a retired key refused before.
    return RetiredKeyGuard(AuditedSigner(SoftwareSigner.for_evm(HdKeyring(mnemonic))))


@pytest_asyncio.fixture
async def world(anvil: Anvil, guard: RetiredKeyGuard) -> AsyncIterator[TokenWorld]:
    evm = EvmAdapter(
        anvil.rpc_url, chain_id=anvil.chain_id, signer=guard, confirmations=3, max_fee_per_gas_cap=500 * 10**9
    )
    try:
        yield await deploy_token(anvil, evm, "usdt")
    finally:
        await evm.aclose()


async def _rotated(engine: AsyncEngine, token: Erc20Adapter) -> tuple[PoolGeneration, PoolGeneration]:
    """Record generation 0, rotate as ``mixhouse keys rotate`` does, and point the adapter at
    the new generation as the worker does; (old, new)."""
    asset = str(token.asset)
    await ensure_first_generation(engine, asset, key_ref=token.generation_key_ref(0), address=token.pool_address)
    new = await rotate(engine, asset, address_of=token.evm.key_address, key_ref_of=token.generation_key_ref)
    async with engine.connect() as conn:
        old = (await generations(conn, asset))[0]
    token.use_pool_key(new.key_ref)
    return old, new


async def _drain_until(
    engine: AsyncEngine, token: Erc20Adapter, anvil: Anvil, guard: RetiredKeyGuard, want: str
) -> list[str]:
    steps: list[str] = []
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        step = await drain_token(engine, token, guard)
        steps.append(step)
        if step == want:
            return steps
        if step == "broadcast":
            await anvil.mine(1)
    raise AssertionError(f"no {want!r} before the deadline: {steps}")


def _token_settings(world: TokenWorld) -> dict[str, object]:
    """The world's token as ``MIXHOUSE_EVM_TOKENS`` gives it (amounts in base units)."""
    return {
        "symbol": str(world.token.asset),
        "contract": world.token.contract,
        "decimals": 6,
        "dust": 10_000,
        "min_deposit": 10 * USDT,
        "max_deposit": 100_000 * USDT,
    }


async def _actions(engine: AsyncEngine) -> list[tuple[str, dict[str, object]]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(audit_log.c.action, audit_log.c.details).order_by(audit_log.c.id))
        return [(r.action, dict(r.details or {})) for r in rows]


async def test_token_rotation_moves_the_tokens_then_the_gas_tank_and_retires(
    engine: AsyncEngine, world: TokenWorld, anvil: Anvil, guard: RetiredKeyGuard
) -> None:
    token = world.token
    await world.pay(token.pool_address, TOKENS)
    await anvil.fund(token.pool_address, GAS_TANK)
    old, new = await _rotated(engine, token)
    assert (new.generation, new.key_ref) == (1, f"m/44'/60'/{token.account}'/1/1")
    assert token.pool_address == new.address != old.address

    steps = await _drain_until(engine, token, anvil, guard, "retired")

    async with engine.connect() as conn:
        states = [(g.generation, g.state) for g in await generations(conn, str(token.asset))]
        moves = (await conn.execute(select(pool_moves).order_by(pool_moves.c.id))).all()
        assert await audit.verify(conn) >= 0
    assert states == [(0, "retired"), (1, "active")], steps
    assert [(m.kind, m.state) for m in moves] == [("pool", "confirmed"), ("gas", "confirmed")]
    tokens_move, gas_move = moves
    # Every token moved, none spent on the move's gas (paid in ETH).
    assert (int(tokens_move.amount), int(tokens_move.network_fee_paid)) == (TOKENS, 0)
    assert await token.balance(old.address) == 0
    assert await token.balance(new.address) == TOKENS
    # The new gas tank holds what the gas move carried; the old one only what cannot pay a move.
    assert await anvil.balance(new.address) == int(gas_move.amount)
    # maxFeePerGas == maxPriorityFeePerGas: the gas move paid exactly its 21000 * P cap, so
    # nothing is left behind; the rest of the tank paid the token move's gas.
    assert int(gas_move.network_fee_paid) == int(gas_move.network_fee_max) > 0
    left = await anvil.balance(old.address)
    assert left == 0
    assert GAS_TANK - int(gas_move.amount) - int(gas_move.network_fee_paid) > 0

    actions = await _actions(engine)
    names = [a for a, _ in actions]
    for wanted, times in (
        ("pool.rotated", 1),
        ("pool.move_signed", 2),
        ("pool.move_broadcast", 2),
        ("pool.move_confirmed", 2),
        ("pool.retired", 1),
    ):
        assert names.count(wanted) == times, (wanted, names)
    signed = [d for a, d in actions if a == "pool.move_signed"]
    assert [d["kind"] for d in signed] == ["pool", "gas"]
    used = [d for a, d in actions if a == "key.used"]
    assert [(d["key_ref"], d["purpose"]) for d in used] == [(old.key_ref, "pool_move")] * 2
    (retired,) = [d for a, d in actions if a == "pool.retired"]
    assert retired["gas_left_wei"] == left

    with pytest.raises(KeyRetired):
        guard.sign_digest(old.key_ref, b"\x01" * 32)
    guard.sign_digest(new.key_ref, b"\x01" * 32)  # the active key still signs
    assert await drain_token(engine, token, guard) == "idle"


async def test_a_token_pool_without_gas_waits_for_it_and_uses_no_nonce(
    engine: AsyncEngine, world: TokenWorld, anvil: Anvil, guard: RetiredKeyGuard
) -> None:
    token = world.token
    await world.pay(token.pool_address, TOKENS)
    old, new = await _rotated(engine, token)

    assert await drain_token(engine, token, guard) == "no-gas"
    async with engine.connect() as conn:
        assert (await conn.execute(select(pool_moves))).all() == []
        nonce = (
            await conn.execute(select(account_nonces.c.next_nonce).where(account_nonces.c.address == old.address))
        ).scalar_one_or_none()
    assert nonce in (None, 0)  # rolled back with the move that was not stored: no gap
    assert await token.balance(old.address) == TOKENS

    # The operator funds the old tank: the drain goes on from there.
    await anvil.fund(old.address, GAS_TANK)
    await _drain_until(engine, token, anvil, guard, "retired")
    assert await token.balance(new.address) == TOKENS


async def test_reconciliation_keeps_the_gas_move_out_of_the_token_books(
    database_url: str, engine: AsyncEngine, anvil: Anvil, world: TokenWorld, mnemonic: str
) -> None:
    from mixhouse.app.build import build_runtime  # noqa: PLC0415
    from mixhouse.mixer.gas import record_gas_tank  # noqa: PLC0415
    from mixhouse.mixer.reconcile import reconcile  # noqa: PLC0415 - the runtime's imports are slow
    from mixhouse.money import Asset  # noqa: PLC0415
    from tests.e2e import anvil_settings  # noqa: PLC0415

    settings = anvil_settings(database_url, anvil, mnemonic, evm_tokens=[_token_settings(world)])
    symbol = str(world.token.asset)
    rt = build_runtime(settings, database_url)
    try:
        token = rt.adapter(symbol)
        assert isinstance(token, Erc20Adapter)
        guard = rt.signers[Asset.ETH]  # a token signs with its chain's signer
        assert isinstance(guard, RetiredKeyGuard)
        await world.pay(token.pool_address, TOKENS)
        await anvil.fund(token.pool_address, GAS_TANK)
        before = await reconcile(rt, token.asset)
        # Liquidity put in by the operator: outside the books, a surplus of exactly TOKENS.
        assert (before.books, before.actual) == (0, TOKENS)

        await _rotated(engine, token)
        # Rotated, not yet drained: the gas tank is still all at the old address, and counted.
        assert (await record_gas_tank(rt, token)).balance_wei == GAS_TANK
        await _drain_until(engine, token, anvil, guard, "retired")
        after = await reconcile(rt, token.asset)
        # Both generations counted; the token move cost no token and the gas move's wei are not
        # token units: the same surplus, nothing else.
        assert (after.books, after.actual, after.low, after.high) == (0, TOKENS, 0, 0)
    finally:
        await rt.aclose()
        await rt.engine.dispose()


async def test_keys_rotate_token_command(
    database_url: str, engine: AsyncEngine, anvil: Anvil, world: TokenWorld, mnemonic: str
) -> None:
    symbol = str(world.token.asset)
    tokens = [_token_settings(world)]
    env = {
        **os.environ,
        "MIXHOUSE_DATABASE_URL": database_url,
        "MIXHOUSE_JOBCOIN_ENABLED": "false",
        "MIXHOUSE_EVM_ENABLED": "true",
        "MIXHOUSE_EVM_RPC_URL": anvil.rpc_url,
        "MIXHOUSE_EVM_CHAIN_ID": str(anvil.chain_id),
        "MIXHOUSE_EVM_MNEMONIC": mnemonic,
        "MIXHOUSE_EVM_TOKENS": json.dumps(tokens),
    }
    code, out, err = await run_mixhouse(env, "keys", "rotate", symbol.lower(), "--json", within=DEADLINE)
    assert code == 0, err
    rows = json.loads(out)
    account = world.token.account
    assert [(r["generation"], r["state"], r["key_ref"]) for r in rows] == [
        (0, "draining", f"m/44'/60'/{account}'/1/0"),
        (1, "active", f"m/44'/60'/{account}'/1/1"),
    ]
    # The addresses are this deployment's keys (the seed phrase is never printed).
    assert rows[0]["address"] == world.evm.key_address(f"m/44'/60'/{account}'/1/0")
    assert mnemonic not in out + err
    code, out, err = await run_mixhouse(env, "keys", "rotate", symbol, within=DEADLINE)
    assert code == 2
    assert "still draining" in out + err
    code, out, err = await run_mixhouse(env, "keys", "rotate", "NOPE", within=DEADLINE)
    assert code == 2
    assert "not available" in out + err
