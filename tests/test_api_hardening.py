"""The HTTP API against hostile input (issue 14, items 1 and 2), through ASGI on a real PostgreSQL.

Every case answers a 4xx (or 503) RFC 9457 problem, never a 500, and changes nothing.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from mixhouse.api.app import create_app
from mixhouse.api.problems import PROBLEM_MEDIA_TYPE
from mixhouse.app.build import build_runtime
from mixhouse.config import Settings
from mixhouse.db.tables import audit_log, mixes
from mixhouse.mixer.runtime import Runtime

ADMIN_KEY = "test-admin-key-0123456789"
ADMIN = {"X-API-Key": ADMIN_KEY}
JOBCOIN_MIX = {"asset": "JOBCOIN", "withdrawal_addresses": ["alice-1", "alice-2"]}


def _settings(database_url: str, **overrides: Any) -> Settings:
    return Settings(jobcoin_enabled=True, database_url=database_url, admin_api_key=SecretStr(ADMIN_KEY), **overrides)


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    runtime = build_runtime(_settings(database_url), database_url, pool_size=2)
    yield runtime
    await runtime.aclose()
    await runtime.engine.dispose()


@pytest.fixture
async def client(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt)), base_url="http://test") as http:
        yield http


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem with ``status``; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:mixhouse:problem:") or body["type"] == "about:blank"
    assert body["title"]
    assert body["detail"]
    return body


async def _counts(rt: Runtime) -> tuple[int, int]:
    """Mixes and audit entries: what a refused request must leave unchanged."""
    async with rt.engine.connect() as conn:
        n_mixes = (await conn.execute(select(func.count()).select_from(mixes))).scalar_one()
        n_audit = (await conn.execute(select(func.count()).select_from(audit_log))).scalar_one()
    return int(n_mixes), int(n_audit)


# -- item 1: bodies that overflowed the parser ---------------------------------------------------


@pytest.mark.parametrize("depth", [65, 5_000, 100_000])
async def test_deeply_nested_body_is_a_400_problem(client: httpx.AsyncClient, rt: Runtime, depth: int) -> None:
    before = await _counts(rt)
    body = b'{"asset":"JOBCOIN","withdrawal_addresses":' + b"[" * depth + b"]" * depth + b"}"
    response = await client.post("/api/v1/mixes", content=body, headers={"content-type": "application/json"})
    problem = assert_problem(response, 400)
    assert problem["type"] == "urn:mixhouse:problem:json-too-deep"
    # FastAPI reads a body without Content-Type as JSON too: it is measured as well.
    response = await client.post("/api/v1/mixes", content=body, headers={"content-type": ""})
    assert_problem(response, 400)
    assert await _counts(rt) == before
    # The service still works.
    assert (await client.post("/api/v1/mixes", json=JOBCOIN_MIX)).status_code == 201


async def test_unbalanced_brackets_are_refused_before_parsing(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/mixes", content=b"[" * 200_000, headers={"content-type": "application/json"})
    assert_problem(response, 400)


async def test_brackets_inside_strings_do_not_count(client: httpx.AsyncClient) -> None:
    addresses = ["[" * 100 + "x", "{" * 50 + '"\\']
    response = await client.post("/api/v1/mixes", json={"asset": "JOBCOIN", "withdrawal_addresses": addresses})
    # Refused by the address rules (or accepted), but not as too deep.
    assert response.status_code in {201, 422}, response.text


# -- item 2: NUL bytes, bigint overflows, database down, body size, Allow --------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/mixes/abc%00def",
        "/api/v1/admin/audit?entity_id=a%00b",
        "/api/v1/admin/audit?entity_type=%00",
        "/api/v1/admin/deposits?asset=%00",
        "/api/v1/admin/mixes?after=%00",
        "/api/v1/admin/deposits?after=1%00",
    ],
)
async def test_nul_in_path_or_query_is_a_400_problem(client: httpx.AsyncClient, rt: Runtime, path: str) -> None:
    before = await _counts(rt)
    problem = assert_problem(await client.get(path, headers=ADMIN), 400)
    assert problem["type"] == "urn:mixhouse:problem:nul-character"
    assert await _counts(rt) == before


async def test_mix_cursor_holding_a_nul_is_a_422_problem(client: httpx.AsyncClient) -> None:
    # A cursor whose decoded mix id holds a NUL: the query string itself is clean base64.
    token = base64.urlsafe_b64encode(b"2026-01-01T00:00:00+00:00|ab\x00cd").decode().rstrip("=")
    response = await client.get("/api/v1/admin/mixes", params={"after": token}, headers=ADMIN)
    assert assert_problem(response, 422)["type"] == "urn:mixhouse:problem:invalid-input"


@pytest.mark.parametrize("route", ["audit", "deposits"])
@pytest.mark.parametrize("after", ["9223372036854775808", "99999999999999999999999", "0", "-1"])
async def test_id_cursor_out_of_bigint_range_is_a_422_problem(
    client: httpx.AsyncClient, route: str, after: str
) -> None:
    response = await client.get(f"/api/v1/admin/{route}", params={"after": after}, headers=ADMIN)
    body = assert_problem(response, 422)
    assert body["type"] == "urn:mixhouse:problem:validation"
    ok = await client.get(f"/api/v1/admin/{route}", params={"after": str(2**63 - 1)}, headers=ADMIN)
    assert ok.status_code == 200, ok.text


async def test_database_down_is_a_503_problem(database_url: str) -> None:
    # A port nothing listens on: every connection attempt is refused at once.
    down_url = "postgresql://postgres@127.0.0.1:9/nothing"
    runtime = build_runtime(_settings(down_url), down_url, pool_size=1)
    try:
        transport = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            for response in (
                await http.get("/api/v1/mixes/some-mix-id"),
                await http.post("/api/v1/mixes", json=JOBCOIN_MIX),
                await http.get("/api/v1/admin/mixes", headers=ADMIN),
            ):
                body = assert_problem(response, 503)
                assert body["type"] == "urn:mixhouse:problem:database-unavailable"
                assert response.headers["retry-after"] == "5"
                assert "127.0.0.1" not in response.text
    finally:
        await runtime.aclose()
        await runtime.engine.dispose()


async def test_body_over_the_limit_is_a_413_problem(client: httpx.AsyncClient, rt: Runtime) -> None:
    before = await _counts(rt)
    padded = {**JOBCOIN_MIX, "padding": "x" * (2 << 20)}
    problem = assert_problem(await client.post("/api/v1/mixes", json=padded), 413)
    assert problem["type"] == "urn:mixhouse:problem:body-too-large"
    # Forms are capped alike.
    assert_problem(await client.post("/api/v1/mixes", data={"padding": "x" * (2 << 20)}), 413)

    async def chunks() -> AsyncIterator[bytes]:
        # Chunked: no Content-Length to refuse on, the guard counts the bytes read.
        yield b'{"asset":"JOBCOIN","withdrawal_addresses":["alice-1"],"padding":"'
        for _ in range(64):
            yield b"x" * 32768
        yield b'"}'

    response = await client.post("/api/v1/mixes", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(response, 413)
    assert await _counts(rt) == before


async def test_body_limit_is_configurable(database_url: str) -> None:
    runtime = build_runtime(_settings(database_url, http_max_body_bytes=2048), database_url, pool_size=1)
    try:
        transport = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            big = {**JOBCOIN_MIX, "padding": "x" * 3000}
            assert_problem(await http.post("/api/v1/mixes", json=big), 413)
            assert (await http.post("/api/v1/mixes", json=JOBCOIN_MIX)).status_code == 201
    finally:
        await runtime.aclose()
        await runtime.engine.dispose()


async def test_405_lists_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    # /api/v1/wallets is served by a POST route and a GET route.
    response = await client.delete("/api/v1/wallets")
    assert_problem(response, 405)
    assert response.headers["allow"] == "GET, POST"
    response = await client.put("/api/v1/mixes")
    assert_problem(response, 405)
    assert response.headers["allow"] == "POST"
