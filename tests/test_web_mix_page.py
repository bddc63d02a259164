"""The mix page in real headless Chromium: a mix created on the page, a deposit on the local
ledger, the page following it live to every payout confirmed; bad input refused in place."""

from __future__ import annotations

import secrets
from decimal import Decimal

import httpx
from playwright.async_api import Page
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.app.worker import run_worker
from mixhouse.chains.jobcoin import ledger
from mixhouse.db.tables import mixes
from mixhouse.servers import background
from tests.web import DESKTOP, PHONE, artifact, chromium, web_stack

COIN = 10**8


async def _fill_addresses(page: Page, addresses: list[str]) -> None:
    for index, address in enumerate(addresses):
        if index:
            await page.click("#add-address")
        await page.locator("#addresses input").nth(index).fill(address)


async def test_mix_created_on_the_page_updates_live_to_every_payout(database_url: str, engine: AsyncEngine) -> None:
    tag = secrets.token_hex(3)
    withdrawals = [f"w-alice-{tag}", f"w-bob-{tag}"]
    async with (
        web_stack(database_url, engine) as stack,
        background(run_worker(stack.rt, database_url, concurrency=4)),
        chromium() as browser,
        httpx.AsyncClient(timeout=10) as http,
    ):
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(stack.base_url + "/")
        await _fill_addresses(page, withdrawals)
        await page.fill("#delay-min", "0")
        await page.fill("#delay-max", "0")
        assert await page.text_content("#q-fee") == "0.5-5"
        assert await page.text_content("#q-min") == "1"
        await page.screenshot(path=artifact("mix_form_desktop.png"), full_page=True)
        await page.click("#create")
        await page.wait_for_url("**/mix/*")
        mix_id = page.url.rsplit("/", 1)[1]
        deposit_address = (await page.text_content("#deposit-address") or "").strip()
        assert deposit_address
        assert await page.locator("#qr svg").count() == 1
        assert "No deposit seen yet" in (await page.text_content("#status") or "")
        # A marker that a reload would wipe: the page must update in place.
        await page.evaluate("window.__notReloaded = true")

        sender = f"sender-{tag}"
        (await http.post(f"{stack.ledger.api_url}/mint", json={"address": sender, "amount": "25"})).raise_for_status()
        sent = await http.post(
            f"{stack.ledger.api_url}/transactions",
            json={"fromAddress": sender, "toAddress": deposit_address, "amount": "25"},
        )
        sent.raise_for_status()

        await page.wait_for_selector(".deposit-item", timeout=60_000)
        await page.wait_for_function(
            """() => {
                const rows = document.querySelectorAll('[data-payout-state]');
                return rows.length > 0 && Array.from(rows).every(r => r.dataset.payoutState === 'confirmed')
                    && document.querySelector('[data-deposit-state]').dataset.depositState === 'pooled';
            }""",
            timeout=90_000,
        )
        assert await page.evaluate("window.__notReloaded === true")
        assert int(await page.get_attribute("#status", "data-updates") or "0") >= 2
        await page.screenshot(path=artifact("mix_page_desktop.png"), full_page=True)
        await page.set_viewport_size(PHONE)
        await page.screenshot(path=artifact("mix_page_phone.png"), full_page=True)

        # The page's amounts are the ledger's, to the base unit.
        shown = [
            (await row.locator("code").first.text_content(), int(await row.get_attribute("data-amount") or "-1"))
            for row in await page.locator("[data-payout-state]").all()
        ]
        async with engine.connect() as conn:
            for address in withdrawals:
                balance, history = await ledger.address_info(conn, address)
                assert balance == sum(amount for to, amount in shown if to == address) > 0
                assert sorted(t.amount for t in history) == sorted(a for to, a in shown if to == address)
        deposit_amount = int(await page.get_attribute("[data-deposit-state]", "data-amount") or "0")
        assert deposit_amount == 25 * COIN
        paid_text = await page.text_content("#paid-out") or ""
        assert Decimal(paid_text) * COIN == sum(a for _, a in shown)
        status = (await http.get(f"{stack.base_url}/api/v1/mixes/{mix_id}")).json()
        assert status["totals"]["paid_out"] == str(sum(a for _, a in shown))

        phone = await browser.new_page(viewport=PHONE)
        await phone.goto(stack.base_url + "/")
        await phone.screenshot(path=artifact("mix_form_phone.png"), full_page=True)
        # Nothing overflows sideways on a phone.
        assert await phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


async def test_bad_addresses_show_the_api_message_next_to_the_field_and_create_nothing(
    database_url: str, engine: AsyncEngine
) -> None:
    async with web_stack(database_url, engine, bitcoin_enabled=True) as stack, chromium() as browser:
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(stack.base_url + "/")
        # A mainnet address on the regtest deployment: the API's own message, as typed.
        await page.check("input[name=asset][value=BTC]")
        await _fill_addresses(page, ["bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"])
        await page.wait_for_function("() => document.querySelector('#address-error-0').textContent !== ''")
        assert "is a mainnet address, not a regtest address" in (await page.text_content("#address-error-0") or "")
        await page.click("#create")
        await page.wait_for_function("() => document.querySelector('#form-error').textContent !== ''")
        assert "mainnet address" in (await page.text_content("#form-error") or "")

        # Jobcoin: duplicates and the pool's own address.
        await page.goto(stack.base_url + "/")
        await _fill_addresses(page, ["alice-x", "alice-x", stack.rt.adapter("JOBCOIN").pool_address])
        await page.wait_for_function("() => document.querySelector('#address-error-1').textContent !== ''")
        assert await page.text_content("#address-error-0") == ""
        assert await page.text_content("#address-error-1") == "withdrawal addresses must be distinct"
        await page.wait_for_function("() => document.querySelector('#address-error-2').textContent !== ''")
        assert await page.text_content("#address-error-2") == "a withdrawal address cannot be the pool address"
        await page.click("#create")
        await page.wait_for_function("() => document.querySelector('#form-error').textContent !== ''")
        assert await page.text_content("#form-error") == "withdrawal addresses must be distinct"
        await page.screenshot(path=artifact("mix_form_errors_desktop.png"), full_page=True)
        await page.set_viewport_size(PHONE)
        await page.screenshot(path=artifact("mix_form_errors_phone.png"), full_page=True)
        assert page.url == stack.base_url + "/"

    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(mixes))).scalar_one() == 0
