"""End to end on a real Ethereum node (anvil): mix ETH and check the chain's own view."""

from __future__ import annotations

import asyncio
import random

from eth_account import Account
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.app.build import build_runtime
from mixhouse.app.worker import run_worker
from mixhouse.mixer.mixes import MixRequest, create_mix, get_mix
from mixhouse.mixer.planner import fee_bounds, is_series_value
from mixhouse.mixer.reconcile import reconcile
from mixhouse.money import Asset
from mixhouse.servers import background
from tests.e2e import anvil_settings, wait_for_payouts
from tests.fixtures.anvil import Anvil

ETHER = 10**18


async def _keep_mining(anvil: Anvil) -> None:
    while True:
        await anvil.mine(1)
        await asyncio.sleep(0.2)


async def test_mix_eth_end_to_end_on_anvil(database_url: str, engine: AsyncEngine, anvil: Anvil) -> None:
    # A mnemonic of its own: a fresh pool, whatever other tests did on the shared node.
    Account.enable_unaudited_hdwallet_features()
    _, mnemonic = Account.create_with_mnemonic()
    settings = anvil_settings(database_url, anvil, mnemonic)
    rt = build_runtime(settings, database_url)
    rt.rng = random.Random(11)
    withdrawals = ["0x" + f"{random.Random(i).getrandbits(160):040x}" for i in range(3)]
    adapter = rt.adapter("ETH")
    withdrawals = [adapter.normalize_address(a) for a in withdrawals]
    try:
        mix = await create_mix(rt, MixRequest("ETH", withdrawals, 0, 3))
        deposit_wei = 1 * ETHER
        before = {w: await anvil.balance(w) for w in withdrawals}
        await anvil.fund(mix["deposit_address"], deposit_wei)
        async with background(_keep_mining(anvil)), background(run_worker(rt, database_url, concurrency=4)):
            view = await wait_for_payouts(rt, mix["id"], within=90)
        dep = view["deposits"][0]
        assert dep["amount"] == deposit_wei
        assert dep["from_addresses"] == [anvil.funder_address]
        payouts = [s for s in view["sends"] if s["kind"] == "payout"]
        sweep = next(s for s in view["sends"] if s["kind"] == "sweep")
        # Documented gas: the sweep's and every payout's 21000 x P are charged to the user.
        assert dep["network_fee_amount"] == sweep["network_fee_reserved"] + sum(
            p["network_fee_reserved"] for p in payouts
        )
        low, high = fee_bounds(deposit_wei - sweep["network_fee_reserved"], mix["fee_min_bps"], mix["fee_max_bps"])
        assert low <= dep["fee_amount"] <= high
        assert all(is_series_value(p["amount"], dep["quantum"]) for p in payouts)
        gains = [await anvil.balance(w) - before[w] for w in withdrawals]
        assert sum(gains) == deposit_wei - dep["fee_amount"] - dep["network_fee_amount"] == dep["payout_total"]
        assert all(gain > 0 for gain in gains)
        # The chain's view: every payout left the pool, none the deposit address.
        for send in payouts:
            tx = await anvil.rpc("eth_getTransactionByHash", [send["txid"]])
            assert tx["from"].lower() == adapter.pool_address.lower()
            assert tx["to"].lower() == send["to_address"].lower()
            assert int(tx["value"], 16) == send["amount"]
            assert send["network_fee_paid"] == send["network_fee_reserved"]  # exact gas, by design
        sweep_tx = await anvil.rpc("eth_getTransactionByHash", [sweep["txid"]])
        assert sweep_tx["from"].lower() == mix["deposit_address"].lower()
        assert sweep_tx["to"].lower() == adapter.pool_address.lower()
        assert await anvil.balance(mix["deposit_address"]) == 0  # swept to the last wei
        assert await anvil.balance(adapter.pool_address) == dep["fee_amount"]  # the fee stays in the pool
        assert (await get_mix(rt, mix["id"]))["mix"]["state"] == "completed"
        result = await reconcile(rt, Asset.ETH)
        assert result.ok, result.detail()
        async with engine.connect() as conn:
            assert await audit.verify(conn) > 0
    finally:
        await rt.aclose()
        await rt.engine.dispose()
