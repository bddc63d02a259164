"""Scanning as a transfer lands: the local ledger's long poll (``GET /api/transactions?after=<id>
&wait_ms=<n>``), the Jobcoin adapter's ``wait_for_transfers`` and the worker's scan between
ticks, on a real ledger server, real PostgreSQL and the real mixer; the original API (no long
poll) falls back to the tick."""

from __future__ import annotations

import asyncio
import random

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.app.build import build_runtime
from mixhouse.chains.jobcoin import ledger
from mixhouse.chains.jobcoin.adapter import JobcoinAdapter
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.tasks import _scan_on_arrival
from mixhouse.money import Asset
from tests.e2e import fast_settings, local_ledger, wait_for_payouts
from tests.scanning import engine_scan

COIN = 10**8
SECRET = b"test-secret-0123456789abcdef"


async def _transfer_soon(engine: AsyncEngine, to_address: str, started: asyncio.Event) -> None:
    # After the waiter has asked (it set ``started`` just before): the transfer lands mid-wait.
    await started.wait()
    await asyncio.sleep(0.2)
    await ledger.transfer(engine, "alice", to_address, COIN)


async def test_the_ledger_answers_a_long_poll_when_a_transfer_lands(engine: AsyncEngine) -> None:
    async with local_ledger(engine) as led, httpx.AsyncClient(timeout=30) as client:
        await ledger.mint(engine, "alice", 10 * COIN)
        [(head, _)] = [(t["id"], t) for t in (await client.get(f"{led.api_url}/transactions?after=0")).json()]
        # Nothing after the head: the wait runs out, the page is empty, the header says it waited.
        idle = await client.get(f"{led.api_url}/transactions", params={"after": head, "wait_ms": 100})
        assert idle.status_code == 200
        assert idle.json() == []
        assert ledger.WAITED_HEADER in idle.headers
        # A transfer during the wait ends it with the transfer.
        started = asyncio.Event()
        landing = asyncio.create_task(_transfer_soon(engine, "bob", started))
        started.set()
        woke = await client.get(f"{led.api_url}/transactions", params={"after": head, "wait_ms": 20_000})
        await landing
        assert [(t["fromAddress"], t["toAddress"]) for t in woke.json()] == [("alice", "bob")]
        # Without wait_ms nothing changes: no header.
        plain = await client.get(f"{led.api_url}/transactions", params={"after": head})
        assert ledger.WAITED_HEADER not in plain.headers
        # A bad wait is refused like any bad parameter.
        bad = await client.get(f"{led.api_url}/transactions", params={"after": head, "wait_ms": 10**6})
        assert bad.status_code == 422


async def test_the_adapter_waits_only_after_a_scan_and_only_where_it_can(engine: AsyncEngine) -> None:
    async with local_ledger(engine) as led:
        chain = JobcoinAdapter(led.api_url, "mixhouse-pool", address_secret=SECRET)
        try:
            await ledger.mint(engine, "alice", 10 * COIN)
            deposit = chain.deposit_address(1)
            assert await chain.wait_for_transfers(5.0) is False  # no scan yet: nothing to wait after
            first = await engine_scan(chain, [deposit], None)
            assert first.transfers == ()
            assert await chain.wait_for_transfers(0.1) is False  # nothing landed
            started = asyncio.Event()
            landing = asyncio.create_task(_transfer_soon(engine, deposit, started))
            started.set()
            assert await chain.wait_for_transfers(20.0) is True
            await landing
            [seen] = (await engine_scan(chain, [deposit], first.cursor)).transfers
            assert (seen.to_address, seen.amount) == (deposit, COIN)
        finally:
            await chain.aclose()


async def test_the_original_api_is_not_long_polled() -> None:
    """A ledger that answers without the header (it ignores ``wait_ms``) is not asked again."""
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url.params.get("wait_ms")))
        return httpx.Response(200, json=[])

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    chain = JobcoinAdapter("http://ledger.test/api", "mixhouse-pool", address_secret=SECRET, client=client)
    try:
        await engine_scan(chain, [chain.deposit_address(0)], None)
        assert await chain.wait_for_transfers(5.0) is False
        assert await chain.wait_for_transfers(5.0) is False
        assert asked.count("5000") == 1
    finally:
        await chain.aclose()
        await client.aclose()


async def test_a_deposit_is_paid_out_by_the_waiting_scan_alone(database_url: str, engine: AsyncEngine) -> None:
    """No worker and no tick: only the scan waiting between ticks sees the deposit, sweeps it
    and runs the payout round right after pooling, and the mix is paid."""
    async with local_ledger(engine) as led:
        rt = build_runtime(fast_settings(database_url, jobcoin_api_url=led.api_url), database_url)
        rt.rng = random.Random(5)
        try:
            await ledger.mint(engine, "alice", 20 * COIN)
            mix = await create_mix(rt, MixRequest("JOBCOIN", ["w-1", "w-2"], 0, 0))
            await scan_asset(rt, Asset.JOBCOIN)  # the tick's scan: nothing paid yet
            waiting = asyncio.create_task(_scan_on_arrival(rt, seconds=120))
            await ledger.transfer(engine, "alice", mix["deposit_address"], 10 * COIN)
            view = await wait_for_payouts(rt, mix["id"], within=60)
            assert not waiting.done(), "the waiter stopped before the deadline"
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            payouts = [s for s in view["sends"] if s["kind"] == "payout"]
            assert sum(p["amount"] for p in payouts) == view["deposits"][0]["payout_total"]
        finally:
            await rt.aclose()
            await rt.engine.dispose()
