"""End to end on anvil: mix USDT (TetherToken's own bytecode) and an OpenZeppelin ERC-20, each to
3 addresses, and check the chain's own view: balanceOf of every withdrawal address equals what the
mix's status says it received, to the base unit; the token pool's books reconcile; the ETH the pool
spent on gas is its own line and matches the chain to the wei.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.app.build import build_runtime
from mixhouse.app.worker import run_worker
from mixhouse.chains.evm import EvmAdapter
from mixhouse.chains.evm.token import Erc20Adapter
from mixhouse.db.tables import audit_log, gas_tanks, sends
from mixhouse.metrics import collect_state
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.gas import gas_spent
from mixhouse.mixer.mixes import MixRequest, create_mix, get_mix
from mixhouse.mixer.reconcile import reconcile
from mixhouse.mixer.refunds import request_refund
from mixhouse.mixer.rounds import run_round
from mixhouse.mixer.tasks import requeue_orphan_sends
from mixhouse.money import Asset
from mixhouse.servers import background
from tests.e2e import anvil_settings, wait_for_payouts
from tests.fixtures.anvil import TOKEN_PAYER as PAYER
from tests.fixtures.anvil import USDT, Anvil, deploy_token
from tests.fixtures.anvil import TokenWorld as World

ETHER = 10**18
NETWORK_FEE = 50_000  # 0.05 token per send, charged to the user for the gas the pool pays


async def _keep_mining(anvil: Anvil) -> None:
    while True:
        await anvil.mine(1)
        await asyncio.sleep(0.2)


def token_settings(database_url: str, anvil: Anvil, mnemonic: str, world: World, symbol: str, **overrides: Any) -> Any:
    """``anvil_settings`` with the world's token configured as ``symbol`` (a symbol per test: a
    process knows each asset with one contract, and every test deploys its own)."""
    token = {
        "symbol": symbol,
        "contract": world.token.contract,
        "decimals": 6,
        "dust": 10_000,
        "min_deposit": 10 * USDT,
        "max_deposit": 100_000 * USDT,
        "network_fee": NETWORK_FEE,
    }
    return anvil_settings(database_url, anvil, mnemonic, evm_tokens=[token], **overrides)


@pytest.mark.parametrize(("kind", "symbol"), [("usdt", "USDT"), ("oz", "OZUSD")])
async def test_mix_token_end_to_end_on_anvil(
    database_url: str, engine: AsyncEngine, anvil: Anvil, evm_adapter: EvmAdapter, kind: str, symbol: str
) -> None:
    world = await deploy_token(anvil, evm_adapter, kind)
    Account.enable_unaudited_hdwallet_features()
    _, mnemonic = Account.create_with_mnemonic()
    rt = build_runtime(token_settings(database_url, anvil, mnemonic, world, symbol), database_url)
    rt.rng = random.Random(5)
    token = rt.adapter(symbol)
    assert isinstance(token, Erc20Adapter)
    withdrawals = [token.normalize_address("0x" + f"{random.Random(i).getrandbits(160):040x}") for i in range(3)]
    try:
        await anvil.fund(token.pool_address, ETHER)  # the gas tank of the token pool
        tank_before = await token.gas_balance(token.pool_address)
        mix = await create_mix(rt, MixRequest(symbol, withdrawals, 0, 3))
        assert await token.gas_balance(mix["deposit_address"]) == 0
        deposit = 1_000 * USDT
        await world.pay(mix["deposit_address"], deposit)
        async with background(_keep_mining(anvil)), background(run_worker(rt, database_url, concurrency=4)):
            view = await wait_for_payouts(rt, mix["id"], within=90)
        dep = view["deposits"][0]
        assert dep["amount"] == deposit
        assert dep["from_addresses"] == [evm_adapter.key_address(PAYER)]
        payouts = [s for s in view["sends"] if s["kind"] == "payout"]
        sweep = next(s for s in view["sends"] if s["kind"] == "sweep")
        gas = [s for s in view["sends"] if s["kind"] == "gas"]
        # The sweep moves the whole deposit; the user pays NETWORK_FEE per send, in tokens.
        assert sweep["amount"] == deposit
        assert dep["network_fee_amount"] == NETWORK_FEE * (1 + len(payouts))
        assert sum(p["amount"] for p in payouts) == dep["payout_total"]
        assert dep["payout_total"] == deposit - dep["fee_amount"] - dep["network_fee_amount"]
        # Each withdrawal address holds, to the base unit, what the status says it received.
        for address in withdrawals:
            said = sum(p["amount"] for p in payouts if p["to_address"] == address)
            assert said > 0
            assert await token.balance(address) == said
        assert await token.balance(mix["deposit_address"]) == 0
        # The pool keeps the mix fee and the network fees charged (it paid the gas in ETH).
        assert await token.balance(token.pool_address) == deposit - dep["payout_total"]
        result = await reconcile(rt, Asset(symbol))
        assert result.ok, result.detail()
        assert (result.books, result.actual) == (deposit - dep["payout_total"],) * 2
        # The reconciliation read the tank too: /metrics exports its ETH and the cost per send.
        async with engine.connect() as conn:
            tank = (await conn.execute(select(gas_tanks).where(gas_tanks.c.asset == symbol))).one()
        assert tank.address == token.pool_address
        assert tank.balance_wei == await token.gas_balance(token.pool_address)
        assert tank.send_cost_wei == gas[0]["amount"] + gas[0]["network_fee_paid"]
        samples = {
            (m.name, s.labels.get("asset")): s.value
            for m in await collect_state(rt)
            for s in m.samples
            if m.name.startswith("mixhouse_gas_")
        }
        # Prometheus samples are float64: exact to the wei only below 2^53.
        assert samples[("mixhouse_gas_tank_wei", symbol)] == float(tank.balance_wei)
        assert samples[("mixhouse_gas_send_cost_wei", symbol)] == float(tank.send_cost_wei)
        # The ETH line: one exact top-up, and every wei the tank spent accounted for.
        assert len(gas) == 1
        assert gas[0]["to_address"] == mix["deposit_address"]
        spent = await gas_spent(rt, symbol)
        assert spent.in_flight == 0
        assert spent.topups == gas[0]["amount"]
        payout_gas = [await token.gas_paid(p["txid"]) for p in payouts]
        sweep_gas = await token.gas_paid(sweep["txid"])
        assert sweep_gas is not None
        assert all(g is not None and g > 0 for g in payout_gas)
        tank_after = await token.gas_balance(token.pool_address)
        assert tank_before - tank_after == spent.topups + spent.topup_fees + sum(g or 0 for g in payout_gas)
        # The deposit address keeps only the refund the gas limit reserved beyond the gas used.
        assert await token.gas_balance(mix["deposit_address"]) == spent.topups - sweep_gas
        assert (await get_mix(rt, mix["id"]))["mix"]["state"] == "completed"
        async with engine.connect() as conn:
            assert await audit.verify(conn) > 0
    finally:
        await rt.aclose()
        await rt.engine.dispose()


async def test_a_deposit_address_usdt_blacklists_is_held_not_retried(
    database_url: str, engine: AsyncEngine, anvil: Anvil, evm_adapter: EvmAdapter
) -> None:
    world = await deploy_token(anvil, evm_adapter, "usdt")
    Account.enable_unaudited_hdwallet_features()
    _, mnemonic = Account.create_with_mnemonic()
    rt = build_runtime(token_settings(database_url, anvil, mnemonic, world, "USDTB"), database_url)
    token = rt.adapter("USDTB")
    assert isinstance(token, Erc20Adapter)
    try:
        await anvil.fund(token.pool_address, ETHER)
        mix = await create_mix(rt, MixRequest("USDTB", [evm_adapter.key_address("m/44'/60'/9'/0/7")], 0, 3))
        await world.pay(mix["deposit_address"], 100 * USDT)
        await world.owner("addBlackList(address)", ["address"], [mix["deposit_address"]])
        tank = await token.gas_balance(token.pool_address)
        async with background(_keep_mining(anvil)), background(run_worker(rt, database_url, concurrency=4)):
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                async with engine.connect() as conn:
                    blocked = (
                        await conn.execute(select(audit_log.c.id).where(audit_log.c.action == "send.blocked"))
                    ).all()
                if blocked:
                    break
                assert asyncio.get_running_loop().time() < deadline, await get_mix(rt, mix["id"])
                await asyncio.sleep(0.2)
            # Reported once and left for the operator: no job of the sweep waits, the recovery
            # task (which requeues every idle unfinished send) does not revive it.
            async with engine.connect() as conn:
                sweep = (await conn.execute(select(sends).where(sends.c.kind == "sweep"))).one()
            assert sweep.state == "scheduled"
            assert str(sweep.last_error).startswith("blocked:")
            assert await requeue_orphan_sends(rt, idle_seconds=0) == 0
        async with engine.connect() as conn:
            assert (
                len((await conn.execute(select(audit_log.c.id).where(audit_log.c.action == "send.blocked"))).all()) == 1
            )
        # Nothing left the pool for it: no gas top-up for a sweep that cannot succeed.
        assert await token.gas_balance(token.pool_address) == tank
        assert await token.balance(mix["deposit_address"]) == 100 * USDT
    finally:
        await rt.aclose()
        await rt.engine.dispose()


async def _blocked(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return len((await conn.execute(select(audit_log.c.id).where(audit_log.c.action == "send.blocked"))).all())


async def test_a_pool_usdt_blacklists_holds_its_payouts_once(
    database_url: str, engine: AsyncEngine, anvil: Anvil, evm_adapter: EvmAdapter
) -> None:
    world = await deploy_token(anvil, evm_adapter, "usdt")
    Account.enable_unaudited_hdwallet_features()
    _, mnemonic = Account.create_with_mnemonic()
    rt = build_runtime(token_settings(database_url, anvil, mnemonic, world, "USDTP"), database_url)
    token = rt.adapter("USDTP")
    assert isinstance(token, Erc20Adapter)
    payees = [evm_adapter.key_address(f"m/44'/60'/9'/1/{i}") for i in range(2)]
    try:
        await anvil.fund(token.pool_address, ETHER)
        # USDT checks only the sender: the sweep into a blacklisted pool lands, its payouts cannot.
        await world.owner("addBlackList(address)", ["address"], [token.pool_address])
        mix = await create_mix(rt, MixRequest("USDTP", payees, 0, 0))
        await world.pay(mix["deposit_address"], 100 * USDT)
        async with background(_keep_mining(anvil)), background(run_worker(rt, database_url, concurrency=4)):
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                view = await get_mix(rt, mix["id"])
                payouts = [s for s in view["sends"] if s["kind"] == "payout"]
                if payouts and await _blocked(engine) == len(payouts):
                    break
                assert asyncio.get_running_loop().time() < deadline, view
                await asyncio.sleep(0.2)
        # Later rounds neither sign them nor report them again.
        await run_round(rt, Asset("USDTP"))
        await run_round(rt, Asset("USDTP"))
        assert await _blocked(engine) == len(payouts)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(sends).where(sends.c.kind == "payout"))).all()
        assert all(r.state == "scheduled" and str(r.last_error).startswith("blocked:") for r in rows)
        assert [await token.balance(p) for p in payees] == [0, 0]
        assert await token.balance(token.pool_address) == 100 * USDT
    finally:
        await rt.aclose()
        await rt.engine.dispose()


async def test_a_held_usdt_deposit_is_refunded_whole_with_the_pools_gas(
    database_url: str, engine: AsyncEngine, anvil: Anvil, evm_adapter: EvmAdapter
) -> None:
    """A deposit below the minimum is held; its refund leaves from the deposit address, which has
    no ETH: the pool tops it up with the refund's exact gas first (one ``gas`` send, its ETH line),
    and the refund address receives every token sent."""
    world = await deploy_token(anvil, evm_adapter, "usdt")
    Account.enable_unaudited_hdwallet_features()
    _, mnemonic = Account.create_with_mnemonic()
    rt = build_runtime(token_settings(database_url, anvil, mnemonic, world, "USDTR"), database_url)
    token = rt.adapter("USDTR")
    assert isinstance(token, Erc20Adapter)
    target = token.normalize_address("0x" + f"{random.Random(99).getrandbits(160):040x}")
    try:
        await anvil.fund(token.pool_address, ETHER)
        tank_before = await token.gas_balance(token.pool_address)
        mix = await create_mix(rt, MixRequest("USDTR", [evm_adapter.key_address("m/44'/60'/9'/2/0")], 0, 3))
        held = 5 * USDT  # below min_deposit (10 USDT): held
        await world.pay(mix["deposit_address"], held)

        async def deposit_state() -> str | None:
            await anvil.mine(1)
            await scan_asset(rt, Asset("USDTR"))
            deps = (await get_mix(rt, mix["id"]))["deposits"]
            return deps[0]["state"] if deps else None

        deadline = asyncio.get_running_loop().time() + 30
        while await deposit_state() != "held":
            assert asyncio.get_running_loop().time() < deadline, await get_mix(rt, mix["id"])
        dep = (await get_mix(rt, mix["id"]))["deposits"][0]
        answer = await request_refund(rt, deposit_id=dep["id"], address=target, operator="test")
        assert answer.created
        assert answer.send["amount"] == held
        assert answer.send["network_fee_reserved"] == 0
        async with background(_keep_mining(anvil)), background(run_worker(rt, database_url, concurrency=4)):
            deadline = asyncio.get_running_loop().time() + 60
            while (await get_mix(rt, mix["id"]))["deposits"][0]["state"] != "refunded":
                assert asyncio.get_running_loop().time() < deadline, await get_mix(rt, mix["id"])
                await asyncio.sleep(0.2)
        assert await token.balance(target) == held
        assert await token.balance(mix["deposit_address"]) == 0
        async with engine.connect() as conn:
            rows = (await conn.execute(select(sends).where(sends.c.asset == "USDTR"))).all()
        assert sorted(r.kind for r in rows) == ["gas", "refund"]
        gas = next(r for r in rows if r.kind == "gas")
        refund = next(r for r in rows if r.kind == "refund")
        assert (gas.state, refund.state) == ("confirmed", "confirmed")
        assert gas.to_address == mix["deposit_address"]
        # Every wei the tank spent is the top-up and the top-up's own fee.
        spent = await gas_spent(rt, "USDTR")
        assert (spent.topups, spent.in_flight) == (gas.amount, 0)
        assert tank_before - await token.gas_balance(token.pool_address) == spent.topups + spent.topup_fees
        refund_gas = await token.gas_paid(refund.txid)
        assert refund_gas is not None
        assert await token.gas_balance(mix["deposit_address"]) == spent.topups - refund_gas
        # The held deposit never entered the pool: its books are untouched.
        result = await reconcile(rt, Asset("USDTR"))
        assert result.ok, result.detail()
        assert (result.books, result.actual) == (0, 0)
    finally:
        await rt.aclose()
        await rt.engine.dispose()
