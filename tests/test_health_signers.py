"""``GET /api/v1/health`` with the signers (mixhouse.api.health): a SoftHSM2 token that signs is
``ok``; one that hangs or is gone makes the answer ``degraded`` (HTTP 200) within the check's
deadline, on the FastAPI route and on the lean path alike; no PIN or token label in the body."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from mixhouse.api.app import create_app
from mixhouse.api.fast_status import FastReads
from mixhouse.api.serving import api_runtime
from mixhouse.keys.audited import unwrap
from mixhouse.keys.health import SignerHealthCache
from mixhouse.keys.hsm import Pkcs11Signer
from mixhouse.mixer.runtime import Runtime
from mixhouse.money import Asset
from tests.e2e import anvil_settings
from tests.fixtures.anvil import Anvil
from tests.fixtures.softhsm import SoftHsm

NOT_A_MNEMONIC = "no software keys in this run"
DEADLINE = 0.3
HEALTHY = {"asset": "ETH", "kind": "pkcs11", "ok": True, "present": True, "logged_in": True}


@pytest.fixture
async def hsm_runtime(database_url: str, anvil: Anvil, softhsm: SoftHsm) -> AsyncIterator[Runtime]:
    settings = anvil_settings(
        database_url, anvil, NOT_A_MNEMONIC, **softhsm.settings(f"health-{uuid.uuid4().hex[:12]}/")
    )
    rt = api_runtime(settings, database_url)
    yield rt
    await rt.aclose()
    await rt.engine.dispose()
    holder = unwrap(rt.signers[Asset.ETH])
    assert isinstance(holder, Pkcs11Signer)
    holder.close()


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def _both(full: httpx.AsyncClient, lean: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    """The route's and the lean path's answers, which must be the same; each within the
    signer check's deadline (plus slack), however the token is."""
    answers = []
    for client in (full, lean):
        started = time.monotonic()
        response = await client.get("/api/v1/health")
        assert time.monotonic() - started < DEADLINE + 1.5, "the health route waited on the token"
        answers.append((response.status_code, response.json()))
    assert answers[0] == answers[1]
    return answers[0]


async def test_health_shows_the_token_and_degrades_when_it_hangs_or_goes(
    hsm_runtime: Runtime, database_url: str, softhsm: SoftHsm
) -> None:
    rt = hsm_runtime
    holder = unwrap(rt.signers[Asset.ETH])
    assert isinstance(holder, Pkcs11Signer)
    app = create_app(rt)
    cache: SignerHealthCache = app.state.signer_health
    # Every request checks again (production reuses an answer for 5 s), with a short deadline.
    cache.max_age = 0
    cache.deadline_seconds = DEADLINE
    fast = FastReads(app, rt, database_url, None)
    await fast.start()
    release = threading.Event()
    held = threading.Event()

    def hang() -> None:
        with holder._lock:  # a call into the token that does not return holds this lock
            held.set()
            release.wait(30)

    try:
        async with _client(app) as full, _client(fast) as lean:
            status, body = await _both(full, lean)
            assert (status, body) == (200, {"status": "ok", "database": True, "signers": [HEALTHY]})

            hung = threading.Thread(target=hang, daemon=True)
            hung.start()
            assert held.wait(5)
            status, body = await _both(full, lean)
            assert status == 200
            assert body["status"] == "degraded"
            assert body["signers"] == [{**HEALTHY, "ok": False, "logged_in": False}]
            release.set()
            hung.join(5)
            assert (await _both(full, lean))[1]["status"] == "ok"

            # The token is gone from its slot (a label no slot has: the library answers
            # "no such token", as when a USB token is pulled).
            holder.close()
            real_label = holder._token_label
            holder._token_label = "mixhouse-absent-token"
            status, body = await _both(full, lean)
            assert status == 200
            assert body["status"] == "degraded"
            assert body["signers"] == [{**HEALTHY, "ok": False, "present": False, "logged_in": False}]
            for secret in (softhsm.pin, softhsm.token_label, "mixhouse-absent-token"):
                assert secret not in str(body)
            holder._token_label = real_label
            assert (await _both(full, lean))[1]["status"] == "ok"
    finally:
        release.set()
        await fast.stop()


async def test_the_cache_reuses_an_answer_and_shares_a_check(softhsm: SoftHsm) -> None:
    signer = softhsm.signer()
    checks = 0
    real = signer.health

    def counted(timeout: float = 5.0) -> Any:
        nonlocal checks
        checks += 1
        return real(timeout)

    signer.health = counted  # type: ignore[method-assign]
    cache = SignerHealthCache({"ETH": signer, "BTC": signer}, max_age=60)
    try:
        first, second = await asyncio.gather(cache.current(), cache.current())
        assert first == second
        assert set(first) == {"BTC", "ETH"}
        assert all(h.ok for h in first.values())
        await cache.current()
        assert checks == 1  # one token for two assets, two callers, and a fresh answer reused
    finally:
        signer.close()
