"""The admin dashboard in real headless Chromium: operator login, a frozen deposit arriving
live, the audit browser and its verify button; wrong passwords, missing CSRF tokens and
expired sessions refused."""

from __future__ import annotations

import secrets

import httpx
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.app.worker import run_worker
from mixhouse.chains.jobcoin import ledger
from mixhouse.db.tables import operator_sessions
from mixhouse.mixer.screening import store_list
from mixhouse.mixer.states import now
from mixhouse.servers import background
from mixhouse.web.admin_pages import COOKIE
from mixhouse.web.operators import create_operator, login, session_for
from tests.web import DESKTOP, PHONE, artifact, chromium, web_stack

COIN = 10**8
PASSWORD = "correct horse battery staple"


async def test_operator_sees_a_frozen_deposit_arrive_live(database_url: str, engine: AsyncEngine) -> None:
    await create_operator(engine, "olga", PASSWORD)
    async with (
        web_stack(database_url, engine) as stack,
        background(run_worker(stack.rt, database_url, concurrency=4)),
        chromium() as browser,
        httpx.AsyncClient(base_url=stack.base_url, timeout=10) as http,
    ):
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(stack.base_url + "/admin")
        assert page.url.endswith("/admin/login")
        await page.fill("input[name=name]", "olga")
        await page.fill("input[name=password]", "wrong password!!")
        await page.click("#login")
        assert await page.text_content("#login-error") == "wrong name or password"
        await page.screenshot(path=artifact("admin_login_refused_desktop.png"), full_page=True)
        await page.fill("input[name=name]", "olga")
        await page.fill("input[name=password]", PASSWORD)
        await page.click("#login")
        await page.wait_for_url("**/admin")
        assert await page.locator("#no-flagged").count() == 1
        await page.evaluate("window.__notReloaded = true")

        async with engine.begin() as conn:
            await store_list(conn, ["listed-sender"], "operator")
        await ledger.mint(engine, "listed-sender", 5 * COIN)
        mix = (await http.post("/api/v1/mixes", json={"asset": "JOBCOIN", "withdrawal_addresses": ["x-1"]})).json()
        await ledger.transfer(engine, "listed-sender", mix["deposit_address"], 5 * COIN)

        await page.wait_for_selector("#flagged tr[data-state=frozen]", timeout=60_000)
        await page.wait_for_selector('#audit tr[data-action="deposit.frozen"]', timeout=30_000)
        assert await page.evaluate("window.__notReloaded === true")
        await page.wait_for_selector("#scans li[data-asset=JOBCOIN]")
        assert int(await page.text_content("#workers-alive") or "0") >= 1
        row = await page.text_content("#flagged tr[data-state=frozen]") or ""
        assert "listed-sender" in row
        assert "5" in row
        await page.screenshot(path=artifact("admin_dashboard_desktop.png"), full_page=True)
        await page.set_viewport_size(PHONE)
        await page.screenshot(path=artifact("admin_dashboard_phone.png"), full_page=True)
        await page.set_viewport_size(DESKTOP)

        await page.click("#verify")
        await page.wait_for_selector("#verify-result")
        assert (await page.text_content("#verify-result") or "").startswith("Intact")

        cookie = next(c for c in await page.context.cookies() if c["name"] == COOKIE)
        assert cookie["httpOnly"]
        assert cookie["sameSite"] == "Strict"
        authed = httpx.AsyncClient(base_url=stack.base_url, timeout=10, cookies={COOKIE: cookie["value"]})
        # A form posted without the session's CSRF token (or with another) does nothing.
        refused = await authed.post("/admin/audit/verify", data={})
        assert refused.status_code == 403
        refused = await authed.post("/admin/logout", data={"csrf_token": "forged"})
        assert refused.status_code == 403
        assert await session_for(engine, cookie["value"]) is not None  # still logged in
        # Without a session: the login form, and no event stream.
        assert (await http.get("/admin")).status_code == 303
        assert (await http.get("/admin/events")).status_code == 401

        # An expired session is refused.
        async with engine.begin() as conn:
            await conn.execute(update(operator_sessions).values(expires_at=now()))
        expired = await authed.get("/admin")
        await authed.aclose()
        assert expired.status_code == 303
        assert expired.headers["location"] == "/admin/login"
        await page.reload()
        assert page.url.endswith("/admin/login")


async def test_passwords_are_stored_as_argon2_hashes_only(engine: AsyncEngine) -> None:
    password = secrets.token_urlsafe(16)
    await create_operator(engine, "pat", password)
    async with engine.connect() as conn:
        stored = (await conn.execute(text("SELECT password_hash FROM operators WHERE name = 'pat'"))).scalar_one()
    assert stored.startswith("$argon2id$")
    assert password not in stored
    assert await login(engine, "pat", password, lifetime_seconds=60) is not None
    assert await login(engine, "pat", password + "x", lifetime_seconds=60) is None
    assert await login(engine, "nobody", password, lifetime_seconds=60) is None
    # A new password ends the sessions of the old one.
    token = await login(engine, "pat", password, lifetime_seconds=60)
    await create_operator(engine, "pat", password + "-new")
    assert await session_for(engine, token) is None
