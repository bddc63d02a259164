"""Mix creation limits through the HTTP API, on a real PostgreSQL: the rate per client, the cap
on open mixes, and who the client is (peer address, X-Forwarded-For from trusted proxies only).

Time is never waited for: a test that needs the window to pass moves the client's stored
arrival time back, which is what the passing of time does to it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select, text, update
from starlette.requests import Request

from mixhouse.api.app import create_app
from mixhouse.api.client_address import client_identity
from mixhouse.app.build import build_runtime
from mixhouse.config import Settings
from mixhouse.db.tables import mix_creation_rates, mixes
from mixhouse.mixer.runtime import Runtime
from tests.test_api import ADMIN_KEY, assert_problem, count_mixes

PEER = ("198.51.100.7", 40000)


def _settings(database_url: str, **overrides: Any) -> Settings:
    return Settings(jobcoin_enabled=True, database_url=database_url, admin_api_key=SecretStr(ADMIN_KEY), **overrides)


@asynccontextmanager
async def _runtime(database_url: str, **overrides: Any) -> AsyncIterator[Runtime]:
    runtime = build_runtime(_settings(database_url, **overrides), database_url, pool_size=4)
    try:
        yield runtime
    finally:
        await runtime.aclose()
        await runtime.engine.dispose()


@asynccontextmanager
async def _client(rt: Runtime, peer: tuple[str, int] = PEER) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(rt), client=peer)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def _body() -> dict[str, Any]:
    return {"asset": "JOBCOIN", "withdrawal_addresses": [f"user-{uuid.uuid4().hex[:8]}"]}


async def _post(http: httpx.AsyncClient, headers: dict[str, str] | None = None) -> httpx.Response:
    return await http.post("/api/v1/mixes", json=_body(), headers=headers)


async def _let_window_pass(rt: Runtime) -> None:
    """What the passing of the whole window does to every client's arrival time."""
    window = f"{rt.settings.mix_create_rate_window_seconds} seconds"
    async with rt.engine.begin() as conn:
        await conn.execute(text("UPDATE mix_creation_rates SET tat = tat - CAST(:w AS interval)"), {"w": window})


# -- the rate per client ---------------------------------------------------------------------


async def test_a_client_gets_its_rate_then_429_with_retry_after(database_url: str) -> None:
    async with (
        _runtime(database_url, mix_create_rate_per_client=3, mix_create_rate_window_seconds=60) as rt,
        _client(rt) as http,
    ):
        for _ in range(3):
            assert (await _post(http)).status_code == 201
        refused = await _post(http)
        body = assert_problem(refused, 429)
        assert body["type"] == "urn:mixhouse:problem:rate-limited"
        assert body["instance"] == "/api/v1/mixes"
        retry_after = int(refused.headers["Retry-After"])
        # Three in a 60 s window: one slot frees every 20 s.
        assert 1 <= retry_after <= 20
        assert body["retry_after_seconds"] == retry_after
        assert await count_mixes(rt) == 3
        # A refusal is not counted: once the window has passed, the client has its rate again.
        await _let_window_pass(rt)
        for _ in range(3):
            assert (await _post(http)).status_code == 201
        assert_problem(await _post(http), 429)
        assert await count_mixes(rt) == 6


async def test_clients_are_counted_apart(database_url: str) -> None:
    async with (
        _runtime(database_url, mix_create_rate_per_client=1) as rt,
        _client(rt, ("198.51.100.7", 1)) as first,
        _client(rt, ("198.51.100.8", 1)) as second,
    ):
        assert (await _post(first)).status_code == 201
        assert_problem(await _post(first), 429)
        assert (await _post(second)).status_code == 201
        # Another connection of the same address is the same client.
        async with _client(rt, ("198.51.100.7", 2)) as again:
            assert_problem(await _post(again), 429)


async def test_the_rate_holds_across_api_processes_and_concurrent_requests(database_url: str) -> None:
    """Two apps on two engines (two API processes) share one count: 12 creations at once of
    one client, spread over both, admit exactly the rate."""
    async with (
        _runtime(database_url, mix_create_rate_per_client=5) as rt1,
        _runtime(database_url, mix_create_rate_per_client=5) as rt2,
        _client(rt1) as http1,
        _client(rt2) as http2,
    ):
        answers = await asyncio.gather(*(_post(http1 if i % 2 else http2) for i in range(12)))
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [201] * 5 + [429] * 7, [r.text for r in answers if r.status_code not in (201, 429)]
        assert await count_mixes(rt1) == 5


async def test_rate_zero_turns_the_limit_off(database_url: str) -> None:
    async with _runtime(database_url, mix_create_rate_per_client=0) as rt, _client(rt) as http:
        for _ in range(40):
            assert (await _post(http)).status_code == 201
        async with rt.engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(mix_creation_rates))).scalar_one() == 0


async def test_idle_clients_are_forgotten(database_url: str) -> None:
    async with _runtime(database_url, mix_create_rate_per_client=2) as rt:
        for n in range(3):
            async with _client(rt, (f"203.0.113.{n}", 1)) as http:
                assert (await _post(http)).status_code == 201
        await _let_window_pass(rt)
        async with _client(rt, ("203.0.113.200", 1)) as http:
            assert (await _post(http)).status_code == 201
        async with rt.engine.connect() as conn:
            clients = (await conn.execute(select(mix_creation_rates.c.client))).scalars().all()
        # Rows whose time had passed say nothing and are gone; the active client remains.
        assert clients == ["203.0.113.200"]


# -- who the client is -------------------------------------------------------------------------


async def test_forwarded_for_counts_only_behind_a_trusted_proxy(database_url: str) -> None:
    async with _runtime(database_url, mix_create_rate_per_client=1, trusted_proxies=["10.0.0.0/8"]) as rt:
        async with _client(rt, ("10.1.2.3", 5000)) as proxy:
            # Behind the proxy: each forwarded client has its own count.
            assert (await _post(proxy, {"X-Forwarded-For": "192.0.2.1"})).status_code == 201
            assert (await _post(proxy, {"X-Forwarded-For": "192.0.2.2"})).status_code == 201
            assert_problem(await _post(proxy, {"X-Forwarded-For": "192.0.2.1"}), 429)
            # What the client wrote on the left of the proxy's entry changes nothing.
            assert_problem(await _post(proxy, {"X-Forwarded-For": "203.0.113.50, 192.0.2.1"}), 429)
        async with _client(rt, ("198.51.100.9", 5000)) as direct:
            # A client that is not a trusted proxy cannot pose as others with the header.
            assert (await _post(direct, {"X-Forwarded-For": "192.0.2.77"})).status_code == 201
            assert_problem(await _post(direct, {"X-Forwarded-For": "192.0.2.78"}), 429)


def _request(peer: str | None, forwarded: list[str] | None = None) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded or []]
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/mixes",
        "headers": headers,
        "client": None if peer is None else (peer, 1),
    }
    return Request(scope)


@pytest.fixture
def proxied() -> Settings:
    return _settings("postgresql://unused", trusted_proxies=["10.0.0.0/8", "2001:db8:ffff::1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("192.0.2.7", [], "192.0.2.7"),
        ("192.0.2.7", ["203.0.113.1"], "192.0.2.7"),  # untrusted peer: header ignored
        ("10.0.0.1", ["203.0.113.1"], "203.0.113.1"),
        ("10.0.0.1", ["198.51.100.1, 203.0.113.1, 10.9.9.9"], "203.0.113.1"),  # a chain of proxies
        ("10.0.0.1", ["198.51.100.1", "203.0.113.1"], "203.0.113.1"),  # repeated headers, in order
        ("10.0.0.1", ["10.0.0.2, 10.0.0.3"], "10.0.0.2"),  # only proxies: the leftmost
        ("10.0.0.1", ["nonsense, 203.0.113.1"], "203.0.113.1"),
        ("10.0.0.1", ["203.0.113.1, nonsense"], "10.0.0.1"),  # a proxy vouches for no such hop
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", ['"[2001:db8:1:2::5]:443"'], "2001:db8:1:2::/64"),
        ("10.0.0.1", ["192.0.2.9:8080"], "192.0.2.9"),
        ("2001:db8:1:2:aaaa::1", [], "2001:db8:1:2::/64"),  # IPv6 by /64
        ("2001:db8:1:2:bbbb::9", [], "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", [], "192.0.2.7"),  # IPv4-mapped
        ("2001:db8:ffff::1", ["192.0.2.33"], "192.0.2.33"),  # an IPv6 proxy
        ("testclient", [], "unknown"),
        (None, ["192.0.2.1"], "unknown"),
    ],
)
def test_client_identity(proxied: Settings, peer: str | None, forwarded: list[str], expected: str) -> None:
    assert client_identity(_request(peer, forwarded), proxied) == expected


def test_ipv6_prefix_is_configurable() -> None:
    settings = _settings("postgresql://unused", rate_limit_ipv6_prefix=128)
    assert client_identity(_request("2001:db8::1"), settings) == "2001:db8::1/128"


def test_trusted_proxies_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXHOUSE_TRUSTED_PROXIES", '["10.0.0.0/8", "::1"]')
    assert [str(n) for n in Settings().trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    assert ipaddress.ip_address("10.2.3.4") in ipaddress.ip_network(str(Settings().trusted_proxies[0]))


# -- the cap on open mixes -------------------------------------------------------------------


async def test_open_mixes_are_capped(database_url: str) -> None:
    async with _runtime(database_url, max_open_mixes=2, mix_create_rate_per_client=0) as rt, _client(rt) as http:
        made = [(await _post(http)).json() for _ in range(2)]
        refused = await _post(http)
        body = assert_problem(refused, 429)
        assert body["type"] == "urn:mixhouse:problem:too-many-open-mixes"
        assert refused.headers["Retry-After"] == "60"
        assert await count_mixes(rt) == 2
        # A mix that expired, or that received its deposit, is no longer open.
        async with rt.engine.begin() as conn:
            await conn.execute(
                update(mixes).where(mixes.c.id == made[0]["id"]).values(expires_at=func.now() - text("interval '1 s'"))
            )
        assert (await _post(http)).status_code == 201
        assert_problem(await _post(http), 429)
        async with rt.engine.begin() as conn:
            await conn.execute(update(mixes).where(mixes.c.id == made[1]["id"]).values(state="mixing"))
        assert (await _post(http)).status_code == 201


async def test_a_capped_creation_is_not_counted_against_the_client(database_url: str) -> None:
    async with _runtime(database_url, max_open_mixes=1, mix_create_rate_per_client=2) as rt, _client(rt) as http:
        made = (await _post(http)).json()
        for _ in range(3):
            assert_problem(await _post(http), 429)
        async with rt.engine.begin() as conn:
            await conn.execute(update(mixes).where(mixes.c.id == made["id"]).values(state="mixing"))
        # One of the client's two creations is left: the refusals by the cap took none.
        assert (await _post(http)).status_code == 201
