"""End to end on a real Bitcoin regtest node (bcoin): mix BTC through the UTXO pool."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from eth_account import Account
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.app.build import build_runtime
from mixhouse.app.worker import run_worker
from mixhouse.config import Settings
from mixhouse.db.tables import utxos
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.mixes import MixRequest, create_mix, get_mix
from mixhouse.mixer.planner import fee_bounds, is_series_value
from mixhouse.mixer.reconcile import reconcile
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.screening import store_list
from mixhouse.money import Asset
from mixhouse.servers import background
from tests.e2e import fast_settings, wait_for_payouts
from tests.fixtures.bcoin import Bcoin

BTC = 100_000_000


def bitcoin_settings(database_url: str, bcoin: Bcoin, **overrides: Any) -> Settings:
    """Settings on the test node with a mnemonic of its own: a fresh pool every test."""
    Account.enable_unaudited_hdwallet_features()
    _, mnemonic = Account.create_with_mnemonic()
    values: dict[str, Any] = {
        "jobcoin_enabled": False,
        "bitcoin_enabled": True,
        "bitcoin_rpc_url": bcoin.node.rpc_url,
        "bitcoin_rpc_user": bcoin.node.rpc_user,
        "bitcoin_rpc_password": bcoin.node.rpc_password,
        "bitcoin_network": "regtest",
        "bitcoin_mnemonic": mnemonic,
        "bitcoin_confirmations": 2,
        "bitcoin_min_deposit": 100_000,
    }
    values.update(overrides)
    return fast_settings(database_url, **values)


@asynccontextmanager
async def mining(bcoin: Bcoin, every: float = 0.3) -> AsyncIterator[None]:
    """Mine a block every ``every`` seconds while the block runs."""

    async def _loop() -> None:
        while True:
            await bcoin.mine(1)
            await asyncio.sleep(every)

    async with background(_loop()):
        yield


async def test_mix_btc_end_to_end_through_the_utxo_pool(database_url: str, engine: AsyncEngine, bcoin: Bcoin) -> None:
    rt = build_runtime(bitcoin_settings(database_url, bcoin), database_url)
    rt.rng = random.Random(5)
    adapter = rt.adapter("BTC")
    user = Bip84Keyring(Account.create_with_mnemonic()[1], "regtest")
    withdrawals = [user.address(0, i) for i in range(3)]
    try:
        # Two users mix at once; the operator adds liquidity to the pool.
        mix_a = await create_mix(rt, MixRequest("BTC", withdrawals, 0, 3))
        mix_b = await create_mix(rt, MixRequest("BTC", [user.address(0, 10), user.address(0, 11)], 0, 3))
        deposit_a = await bcoin.fund(mix_a["deposit_address"], 1 * BTC)
        await bcoin.fund(mix_b["deposit_address"], BTC // 2)
        await bcoin.fund(adapter.pool_address, 2 * BTC)
        async with mining(bcoin), background(run_worker(rt, database_url, concurrency=4)):
            view_a = await wait_for_payouts(rt, mix_a["id"], within=120)
            await wait_for_payouts(rt, mix_b["id"], within=120)
            await _settled(rt)
        dep = view_a["deposits"][0]
        assert dep["amount"] == 1 * BTC
        assert dep["chain_ref"].startswith(deposit_a)
        low, high = fee_bounds(BTC, mix_a["fee_min_bps"], mix_a["fee_max_bps"])
        assert low <= dep["fee_amount"] <= high
        payouts = [s for s in view_a["sends"] if s["kind"] == "payout"]
        assert all(is_series_value(p["amount"], dep["quantum"]) for p in payouts)
        assert not [s for s in view_a["sends"] if s["kind"] == "sweep"]  # UTXO deposits are not swept
        assert dep["network_fee_amount"] == sum(p["network_fee_reserved"] for p in payouts)
        assert sum(p["amount"] for p in payouts) == dep["payout_total"]
        assert dep["payout_total"] == dep["amount"] - dep["fee_amount"] - dep["network_fee_amount"]
        # The node's own view of every payout transaction.
        own_outpoint = dep["chain_ref"]
        received: dict[str, int] = dict.fromkeys(withdrawals, 0)
        # Payouts of several mixes (and one piece of each address) may share a transaction: each once.
        for txid in {send["txid"] for send in payouts}:
            tx = await bcoin.rpc("getrawtransaction", txid, True)
            assert tx["confirmations"] >= 2
            spent = {f"{vin['txid']}:{vin['vout']}" for vin in tx["vin"]}
            assert own_outpoint not in spent, "a payout spent its own mix's deposit"
            for out in tx["vout"]:
                address = out["scriptPubKey"].get("address") or (out["scriptPubKey"].get("addresses") or [None])[0]
                if address in received:
                    received[address] += round(out["value"] * BTC)
        assert all(amount > 0 for amount in received.values())
        assert sum(received.values()) == dep["payout_total"]
        for address in withdrawals:
            assert await adapter.balance(address) == received[address]
        assert (await reconcile(rt, Asset.BTC)).ok
        async with engine.connect() as conn:
            assert await audit.verify(conn) > 0
        assert (await get_mix(rt, mix_a["id"]))["mix"]["state"] == "completed"
    finally:
        await rt.aclose()
        await rt.engine.dispose()


async def _settled(rt: Runtime) -> None:
    """Wait until no pool coin is reserved or unconfirmed (every payout's change is back)."""
    for _ in range(200):
        async with rt.engine.connect() as conn:
            busy = (await conn.execute(select(utxos.c.txid).where(utxos.c.state.in_(["reserved"])))).first()
        if busy is None:
            return
        await asyncio.sleep(0.2)


async def test_a_reorg_sends_a_deposit_back_to_unconfirmed(
    database_url: str, engine: AsyncEngine, bcoin: Bcoin
) -> None:
    rt = build_runtime(bitcoin_settings(database_url, bcoin, bitcoin_confirmations=3), database_url)
    adapter = rt.adapter("BTC")
    user = Bip84Keyring(Account.create_with_mnemonic()[1], "regtest")
    try:
        mix = await create_mix(rt, MixRequest("BTC", [user.address(0, 0)], 0, 0))
        txid = await bcoin.fund(mix["deposit_address"], BTC // 10)
        [block] = await bcoin.mine(1)
        await bcoin.mine(1)
        await scan_asset(rt, Asset.BTC)
        dep = (await get_mix(rt, mix["id"]))["deposits"][0]
        assert (dep["state"], dep["confirmations"]) == ("seen", 2)
        await bcoin.rpc("invalidateblock", block)  # the block holding the deposit is orphaned
        await scan_asset(rt, Asset.BTC)
        view = await get_mix(rt, mix["id"])
        assert view["deposits"][0]["state"] in {"seen", "dropped"}
        assert view["deposits"][0]["confirmations"] == 0 or view["deposits"][0]["state"] == "dropped"
        assert view["sends"] == []  # no payout for an unconfirmed deposit
        async with engine.connect() as conn:
            assert (await conn.execute(select(utxos))).first() is None  # not in the pool
        # Mined again (the transaction went back to the mempool, or is re-sent) it confirms.
        if txid not in await bcoin.rpc("getrawmempool"):
            await bcoin.rpc("sendrawtransaction", (await bcoin.rpc("getrawtransaction", txid, False)))
        await bcoin.mine(3)
        await scan_asset(rt, Asset.BTC)
        await scan_asset(rt, Asset.BTC)
        view = await get_mix(rt, mix["id"])
        assert view["deposits"][0]["state"] == "pooled"
        assert adapter.confirmations_required == 3
    finally:
        await rt.aclose()
        await rt.engine.dispose()


async def test_a_deposit_from_a_listed_address_is_frozen(database_url: str, engine: AsyncEngine, bcoin: Bcoin) -> None:
    rt = build_runtime(bitcoin_settings(database_url, bcoin), database_url)
    user = Bip84Keyring(Account.create_with_mnemonic()[1], "regtest")
    try:
        async with engine.begin() as conn:
            await store_list(conn, [bcoin.funder_address], "operator")
        mix = await create_mix(rt, MixRequest("BTC", [user.address(0, 0)], 0, 0))
        await bcoin.fund(mix["deposit_address"], BTC // 10)
        await bcoin.mine(2)
        await scan_asset(rt, Asset.BTC)
        view = await get_mix(rt, mix["id"])
        assert view["deposits"][0]["state"] == "frozen"
        assert bcoin.funder_address in view["deposits"][0]["reason"]
        assert view["sends"] == []
        async with engine.connect() as conn:
            assert (await conn.execute(select(utxos))).first() is None  # never joins the pool
    finally:
        await rt.aclose()
        await rt.engine.dispose()
