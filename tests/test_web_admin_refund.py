"""The dashboard's actions. In real headless Chromium, with a running worker and the real Jobcoin
ledger: a double click on a held deposit's refund (and a double submit behind it) makes exactly
one refund on the ledger, the deposit shows refunded, the audit browser shows both entries. And
the acknowledge form of a paused pool (CSRF-checked) resumes its payouts."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.app.worker import run_worker
from mixhouse.chains.jobcoin import ledger
from mixhouse.db.tables import deposits, sends
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.reconcile import reconcile
from mixhouse.mixer.sends import execute_send, payouts_paused
from mixhouse.money import Asset
from mixhouse.servers import background
from mixhouse.web.admin_pages import COOKIE
from mixhouse.web.operators import create_operator, login, session_for
from tests.web import DESKTOP, PHONE, artifact, chromium, wait_until, web_stack

COIN = 10**8
PASSWORD = "correct horse battery staple"
HELD = COIN // 2  # below the mix minimum: held


async def test_operator_refunds_a_held_deposit_exactly_once_on_a_double_click(
    database_url: str, engine: AsyncEngine
) -> None:
    await create_operator(engine, "olga", PASSWORD)
    async with (
        web_stack(database_url, engine) as stack,
        background(run_worker(stack.rt, database_url, concurrency=4)),
        chromium() as browser,
        httpx.AsyncClient(base_url=stack.base_url, timeout=10) as http,
    ):
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(stack.base_url + "/admin/login")
        await page.fill("input[name=name]", "olga")
        await page.fill("input[name=password]", PASSWORD)
        await page.click("#login")
        await page.wait_for_url("**/admin")

        await ledger.mint(engine, "small-sender", HELD)
        mix = (await http.post("/api/v1/mixes", json={"asset": "JOBCOIN", "withdrawal_addresses": ["x-1"]})).json()
        await ledger.transfer(engine, "small-sender", mix["deposit_address"], HELD)
        row = page.locator("#flagged tr[data-state=held]")
        await row.wait_for(timeout=60_000)
        deposit_id = await row.get_attribute("data-deposit-id")
        assert deposit_id is not None
        # Typing survives the live block's replacements (the worker keeps writing audit entries).
        await row.locator("input[name=address]").fill("small-sender-back")
        await page.screenshot(path=artifact("admin_refund_form_desktop.png"), full_page=True)

        # The same form posted twice at once behind the page's back, with the session's token.
        cookie = next(c for c in await page.context.cookies() if c["name"] == COOKIE)
        session = await session_for(engine, cookie["value"])
        assert session is not None
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=10, cookies={COOKIE: cookie["value"]}) as authed:
            forged = await authed.post(f"/admin/deposits/{deposit_id}/refund", data={"address": "small-sender-back"})
            assert forged.status_code == 403  # no CSRF token: refused, nothing scheduled
            form = {"csrf_token": session.csrf_token, "address": "small-sender-back"}
            url = f"/admin/deposits/{deposit_id}/refund"
            async with asyncio.TaskGroup() as tasks:
                first = tasks.create_task(authed.post(url, data=form))
                await page.locator(f'#flagged tr[data-deposit-id="{deposit_id}"] .refund-submit').dblclick()
                second = tasks.create_task(authed.post(url, data=form))
            assert sorted([first.result().status_code, second.result().status_code]) in ([200, 200], [200, 202])
            other = await authed.post(url, data={**form, "address": "someone-else"})
            assert other.status_code == 409
            assert "another address" in other.text

        await page.wait_for_selector("#action-result")
        assert "small-sender-back" in (await page.text_content("#action-result") or "")
        await page.goto(stack.base_url + "/admin")
        await page.wait_for_selector(
            f'#flagged tr[data-deposit-id="{deposit_id}"][data-state=refunded]', timeout=30_000
        )
        await page.wait_for_selector('#audit tr[data-action="deposit.refund_requested"]', timeout=30_000)
        await page.wait_for_selector('#audit tr[data-action="deposit.refunded"]', timeout=30_000)
        info = await page.text_content(f'#flagged tr[data-deposit-id="{deposit_id}"] .refund-info') or ""
        assert "small-sender-back" in info
        assert "confirmed" in info
        assert await page.locator('#audit tr[data-action="deposit.refund_requested"]').count() == 1
        await page.screenshot(path=artifact("admin_refunded_desktop.png"), full_page=True)
        await page.set_viewport_size(PHONE)
        await page.screenshot(path=artifact("admin_refunded_phone.png"), full_page=True)

        async def ledger_paid() -> bool:
            async with engine.connect() as conn:
                return (await ledger.address_info(conn, "small-sender-back"))[0] == HELD

        await wait_until(ledger_paid, within=30, what="the refund on the ledger")
        async with engine.connect() as conn:
            transfers = [t for t in await ledger.all_transfers(conn) if t.to_address == "small-sender-back"]
            refunds = (await conn.execute(select(sends).where(sends.c.kind == "refund"))).all()
            state = (await conn.execute(select(deposits.c.state).where(deposits.c.id == int(deposit_id)))).scalar_one()
            left, _ = await ledger.address_info(conn, mix["deposit_address"])
        assert len(transfers) == 1
        assert transfers[0].amount == HELD
        assert len(refunds) == 1
        assert state == "refunded"
        assert left == 0

        # The user's own page says so.
        await page.goto(f"{stack.base_url}/mix/{mix['id']}")
        await page.wait_for_selector("[data-deposit-state=refunded] .refund")
        assert "small-sender-back" in (await page.text_content("[data-deposit-state=refunded] .refund") or "")
        await page.screenshot(path=artifact("mix_refunded_phone.png"), full_page=True)


async def test_the_dashboard_acknowledges_a_mismatch_and_resumes_payouts(
    database_url: str, engine: AsyncEngine
) -> None:
    await create_operator(engine, "olga", PASSWORD)
    async with web_stack(database_url, engine) as stack:
        rt = stack.rt
        token = await login(engine, "olga", PASSWORD, lifetime_seconds=600)
        assert token is not None
        session = await session_for(engine, token)
        assert session is not None
        await ledger.mint(engine, "sender", 10 * COIN)
        mix = await create_mix(rt, MixRequest("JOBCOIN", ["w-1"], 0, 0))
        await ledger.transfer(engine, "sender", mix["deposit_address"], 10 * COIN)
        await scan_asset(rt, Asset.JOBCOIN)
        async with engine.connect() as conn:
            sweep_id = (await conn.execute(select(sends.c.id).where(sends.c.kind == "sweep"))).scalar_one()
        assert await execute_send(rt, sweep_id) == "confirmed"
        await ledger.transfer(engine, rt.adapter("JOBCOIN").pool_address, "elsewhere", COIN)
        mismatch = await reconcile(rt, Asset.JOBCOIN)
        assert await payouts_paused(rt, "JOBCOIN")
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=10, cookies={COOKIE: token}) as authed:
            page = (await authed.get("/admin")).text
            assert 'action="/admin/reconciliations/JOBCOIN/acknowledge"' in page
            url = "/admin/reconciliations/JOBCOIN/acknowledge"
            form = {"reason": "moved to cold storage by hand", "expected": str(mismatch.books)}
            form["actual"] = str(mismatch.actual)
            refused = await authed.post(url, data=form)
            assert refused.status_code == 403  # no CSRF token
            assert await payouts_paused(rt, "JOBCOIN")
            done = await authed.post(url, data={**form, "csrf_token": session.csrf_token})
            assert done.status_code == 201, done.text
            assert "acknowledged" in done.text
            assert not await payouts_paused(rt, "JOBCOIN")
            assert "mismatch acknowledged" in (await authed.get("/admin")).text
