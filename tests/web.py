"""Helpers of the web tests: the API (with its pages) over a real socket next to the local
ledger, and Debian's Chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from playwright.async_api import Browser, ViewportSize, async_playwright
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.api.app import create_app
from mixhouse.app.build import build_runtime
from mixhouse.mixer.runtime import Runtime
from mixhouse.servers import free_port, running_server
from tests.e2e import Ledger, fast_settings, local_ledger

CHROMIUM = "/usr/bin/chromium"
# The flags Chromium needs on these machines (root, no GPU, a closed network).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
CHROMIUM_PRESENT = Path(CHROMIUM).exists()  # read once, at import
DESKTOP = ViewportSize(width=1280, height=900)
PHONE = ViewportSize(width=390, height=844)
# Screenshots land here (test artifacts); MIXHOUSE_TEST_ARTIFACTS moves them.
ARTIFACTS = Path(os.environ.get("MIXHOUSE_TEST_ARTIFACTS", ".artifacts")) / "web"


@dataclass
class WebStack:
    """A running API with its pages and the ledger it mixes on."""

    rt: Runtime
    base_url: str
    ledger: Ledger


@asynccontextmanager
async def web_stack(database_url: str, engine: AsyncEngine, **overrides: Any) -> AsyncIterator[WebStack]:
    """The local ledger and ``create_app`` on free ports, with :func:`fast_settings` and ``overrides``."""
    async with local_ledger(engine) as led:
        rt = build_runtime(fast_settings(database_url, jobcoin_api_url=led.api_url, **overrides), database_url)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(rt), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
            )
        )
        try:
            async with running_server(server):
                yield WebStack(rt, f"http://127.0.0.1:{port}", led)
        finally:
            await rt.aclose()
            await rt.engine.dispose()


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Headless Debian Chromium under Playwright.

    Raises:
        AssertionError: ``/usr/bin/chromium`` is missing (``make install`` installs it).
    """
    assert CHROMIUM_PRESENT, f"{CHROMIUM} is missing: run make install (apt-get install chromium)"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


def artifact(name: str) -> str:
    """Path (as text) of screenshot ``name`` under :data:`ARTIFACTS`, its folder created."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return str(ARTIFACTS / name)


async def wait_until(check: Callable[[], Awaitable[bool]], *, within: float, what: str) -> None:
    """Poll ``check`` until it is true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {within} s")
