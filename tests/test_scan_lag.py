"""Scan lag in blocks: real scans of the local Jobcoin ledger, anvil and bcoin store the tip
they saw with the cursor, the lag falls to 0 as the scans catch up, and ``/metrics`` and the
dashboard show it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.app.build import build_runtime
from mixhouse.chains.jobcoin import adapter as jobcoin_adapter
from mixhouse.chains.jobcoin import ledger
from mixhouse.config import DEV_ADMIN_KEY
from mixhouse.db.tables import chain_cursors, ledger_transfers
from mixhouse.metrics import collect_state
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.money import Asset
from mixhouse.watch.scans import BTC_MAX_BLOCKS_PER_SCAN as BTC_BLOCKS_PER_SCAN
from mixhouse.watch.scans import EVM_MAX_BLOCKS_PER_SCAN as MAX_BLOCKS_PER_SCAN
from mixhouse.web.admin_pages import dashboard_context
from tests.e2e import fast_settings, scan_caught_up
from tests.fixtures.anvil import TEST_MNEMONIC, Anvil
from tests.fixtures.bcoin import Bcoin
from tests.web import WebStack, web_stack

COIN = 10**8
AUTH = {"Authorization": f"Bearer {DEV_ADMIN_KEY}"}
ETH_WITHDRAWAL = "0x52908400098527886E0F7030069857D2E4169EE7"


async def _heights(engine: AsyncEngine, asset: Asset) -> tuple[int | None, int | None]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(chain_cursors.c.tip_height, chain_cursors.c.scanned_height).where(
                    chain_cursors.c.asset == asset.value
                )
            )
        ).one()
    return row[0], row[1]


async def _lag(engine: AsyncEngine, asset: Asset) -> int:
    tip, scanned = await _heights(engine, asset)
    assert tip is not None
    assert scanned is not None
    return tip - scanned


async def _scraped_lag(http: httpx.AsyncClient) -> dict[str, float]:
    body = (await http.get("/metrics", headers=AUTH)).text
    return {
        s.labels["asset"]: s.value
        for family in text_string_to_metric_families(body)
        if family.name == "mixhouse_scan_lag_blocks"
        for s in family.samples
    }


async def _dashboard_lag(stack: WebStack) -> dict[str, Any]:
    return {asset: (lag, unit) for asset, _age, lag, unit in (await dashboard_context(stack.rt))["scans"]}


async def test_scan_lag_falls_to_zero_as_the_scans_catch_up(
    database_url: str, engine: AsyncEngine, anvil: Anvil, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small history pages so a Jobcoin scan stops at its page limit before the ledger's end.
    monkeypatch.setattr(jobcoin_adapter, "PAGE_SIZE", 3)
    monkeypatch.setattr(jobcoin_adapter, "MAX_PAGES_PER_SCAN", 2)
    async with (
        web_stack(
            database_url,
            engine,
            evm_enabled=True,
            evm_rpc_url=anvil.rpc_url,
            evm_chain_id=anvil.chain_id,
            evm_mnemonic=TEST_MNEMONIC,
            evm_confirmations=2,
        ) as stack,
        httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http,
    ):
        rt = stack.rt
        # A scan only runs while a mix is watched.
        await create_mix(rt, MixRequest("JOBCOIN", ["lag-w"], 0, 0))
        await create_mix(rt, MixRequest("ETH", [ETH_WITHDRAWAL], 0, 0))
        assert await _scraped_lag(http) == {}  # no scan yet: no figure, not a made-up 0

        # -- Jobcoin: 21 transfers, a scan reads at most 6 of them ------------------------
        await ledger.mint(engine, "lag-sender", 100 * COIN)
        for i in range(20):
            await ledger.transfer(engine, "lag-sender", f"lag-r{i}", COIN)
        async with engine.connect() as conn:
            last_id = (await conn.execute(select(func.max(ledger_transfers.c.id)))).scalar_one()
        await scan_asset(rt, Asset.JOBCOIN)
        tip, scanned = await _heights(engine, Asset.JOBCOIN)
        assert tip == last_id  # found past the page limit
        assert scanned is not None
        assert 0 < scanned < last_id
        first_lag = last_id - scanned
        assert (await _scraped_lag(http))["JOBCOIN"] == first_lag
        assert (await _dashboard_lag(stack))["JOBCOIN"] == (first_lag, "transfers")
        lags = [first_lag]
        for _ in range(20):
            if lags[-1] == 0:
                break
            await scan_asset(rt, Asset.JOBCOIN)
            lags.append(await _lag(engine, Asset.JOBCOIN))
        assert lags[-1] == 0, lags
        assert lags == sorted(lags, reverse=True)  # never falls back
        assert len(set(lags)) > 2  # it fell in steps, one page limit at a time
        assert (await _scraped_lag(http))["JOBCOIN"] == 0
        assert (await _heights(engine, Asset.JOBCOIN))[0] == last_id

        # -- Ethereum: more new blocks than one scan reads --------------------------------
        await scan_caught_up(rt, Asset.ETH)  # the first scans: the blocks since the mix's creation
        assert await _lag(engine, Asset.ETH) == 0
        behind = 200
        await anvil.mine(MAX_BLOCKS_PER_SCAN + behind)
        head = await anvil.block_number()
        await scan_asset(rt, Asset.ETH)
        assert await _heights(engine, Asset.ETH) == (head, head - behind)
        assert (await _scraped_lag(http))["ETH"] == behind
        assert (await _dashboard_lag(stack))["ETH"] == (behind, "blocks")
        await scan_asset(rt, Asset.ETH)
        assert await _heights(engine, Asset.ETH) == (head, head)
        assert await _scraped_lag(http) == {"JOBCOIN": 0, "ETH": 0}
        assert (await _dashboard_lag(stack))["ETH"] == (0, "blocks")


async def test_bitcoin_scan_lag_falls_to_zero(database_url: str, engine: AsyncEngine, bcoin: Bcoin) -> None:
    settings = fast_settings(
        database_url,
        jobcoin_enabled=False,
        bitcoin_enabled=True,
        bitcoin_rpc_url=bcoin.node.rpc_url,
        bitcoin_rpc_user=bcoin.node.rpc_user,
        bitcoin_rpc_password=bcoin.node.rpc_password,
        bitcoin_network="regtest",
        bitcoin_mnemonic=TEST_MNEMONIC,
        bitcoin_confirmations=2,
    )
    rt = build_runtime(settings, database_url)
    try:
        # A UTXO chain is scanned even with no mix (the pool's own coins are watched).
        await scan_asset(rt, Asset.BTC)
        tip = await bcoin.tip()
        assert await _heights(engine, Asset.BTC) == (tip, tip)
        behind = 30
        await bcoin.mine(BTC_BLOCKS_PER_SCAN + behind)
        head = await bcoin.tip()
        await scan_asset(rt, Asset.BTC)
        assert await _heights(engine, Asset.BTC) == (head, head - behind)
        lag = {
            s.labels["asset"]: s.value
            for family in await collect_state(rt)
            if family.name == "mixhouse_scan_lag_blocks"
            for s in family.samples
        }
        assert lag == {"BTC": behind}
        await scan_asset(rt, Asset.BTC)
        assert await _heights(engine, Asset.BTC) == (head, head)
    finally:
        await rt.aclose()
        await rt.engine.dispose()
