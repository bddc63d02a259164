"""The lean path of the polled reads (mixhouse.api.fast_status) and its status cache.

* Its answers equal the FastAPI routes' byte for byte (status, headers, body) for a found
  mix, an unknown one, malformed ids, a NUL, a query string, ``/health``, and while the
  database is down (503 problems), so the two cannot drift.
* The cache never keeps a body older than a commit it has heard of: every kind of change to
  the three tables the status reads evicts it, a body read while a change arrived is not
  stored, and a lost listening connection empties and disables the cache until it listens again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import SecretStr
from sqlalchemy import update

from mixhouse.api.app import create_app
from mixhouse.api.fast_status import FastReads, StatusCache
from mixhouse.api.serving import api_app, api_runtime
from mixhouse.api.status_feed import EVERY_MIX, MixChangeFeed, mix_digest
from mixhouse.config import Settings
from mixhouse.db.tables import deposits, mixes, sends
from mixhouse.mixer.runtime import Runtime
from mixhouse.servers import free_port

COIN = 10**8
WAIT_SECONDS = 10.0
# Headers the ASGI transports may differ on by construction: none. Compared whole.


def _settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, admin_api_key=SecretStr("test-admin-key-0123456789"))


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    runtime = api_runtime(_settings(database_url), database_url)
    yield runtime
    await runtime.aclose()
    await runtime.engine.dispose()


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
async def apps(rt: Runtime, database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, FastReads]]:
    """A client of the FastAPI app alone, one of the lean path in front of it (with its feed
    listening), and the lean path."""
    app = create_app(rt)
    fast = FastReads(app, rt, database_url, MixChangeFeed(database_url))
    await fast.start()
    assert fast.feed is not None
    await asyncio.wait_for(fast.feed.connected.wait(), WAIT_SECONDS)
    async with _client(app) as full, _client(fast) as lean:
        yield full, lean, fast
    await fast.stop()


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def _create(client: httpx.AsyncClient) -> dict[str, Any]:
    answer = await client.post("/api/v1/mixes", json={"asset": "JOBCOIN", "withdrawal_addresses": ["f-1", "f-2"]})
    assert answer.status_code == 201, answer.text
    mix: dict[str, Any] = answer.json()
    return mix


async def _add_deposit(rt: Runtime, mix: dict[str, Any], n: int, state: str = "pooled") -> int:
    async with rt.engine.begin() as conn:
        dep_id: int = (
            await conn.execute(
                deposits.insert()
                .values(
                    mix_id=mix["id"],
                    asset="JOBCOIN",
                    chain_ref=f"{mix['deposit_address']}#{n}",
                    deposit_address=mix["deposit_address"],
                    from_addresses=["sender"],
                    amount=(n + 1) * COIN,
                    state=state,
                    confirmations=1,
                )
                .returning(deposits.c.id)
            )
        ).scalar_one()
    return dep_id


def _same(a: httpx.Response, b: httpx.Response) -> None:
    assert (a.status_code, a.headers.raw, a.content) == (b.status_code, b.headers.raw, b.content)


async def test_lean_answers_equal_the_routes(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient, FastReads], rt: Runtime
) -> None:
    full, lean, fast = apps
    mix = await _create(full)
    await _add_deposit(rt, mix, 0)
    bare = await _create(full)
    paths = [
        mix["status_url"],
        bare["status_url"],
        "/api/v1/mixes/no-such-mix",
        "/api/v1/mixes/%20odd%3Fid%C3%A9",  # malformed: decoded to a space, '?' and an accent
        "/api/v1/mixes/" + "x" * 5000,
        "/api/v1/mixes/abc%00def",  # NUL: the request guard's 400, through the app
        "/api/v1/mixes/abc%2Fdef",
        "/api/v1/mixes/",
        mix["status_url"] + "?verbose=1",
        mix["status_url"] + "/",
        "/api/v1/health",
    ]
    for _ in range(2):  # the second time from the cache
        for path in paths:
            _same(await full.get(path), await lean.get(path))
    assert len(fast.cache) == 2  # only found mixes are cached
    answer = await lean.get("/api/v1/mixes/no-such-mix")
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == "urn:mixhouse:problem:not-found"
    assert (await lean.get("/api/v1/mixes/abc%00def")).json()["type"] == "urn:mixhouse:problem:nul-character"
    # The routes stay in the app, so the OpenAPI document still describes them.
    spec = (await lean.get("/openapi.json")).json()
    assert "get" in spec["paths"]["/api/v1/mixes/{mix_id}"]
    assert "get" in spec["paths"]["/api/v1/health"]


async def test_lean_answers_equal_the_routes_while_the_database_is_down() -> None:
    # A port nothing listens on: every connection attempt is refused.
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    runtime = api_runtime(_settings(down), down)
    app = create_app(runtime)
    fast = FastReads(app, runtime, down, None)
    await fast.start()
    try:
        async with _client(app) as full, _client(fast) as lean:
            for path in ("/api/v1/mixes/some-mix", "/api/v1/health"):
                a, b = await full.get(path), await lean.get(path)
                _same(a, b)
                assert a.status_code == 503
            problem = (await lean.get("/api/v1/mixes/some-mix")).json()
            assert problem["type"] == "urn:mixhouse:problem:database-unavailable"
            assert (await lean.get("/api/v1/mixes/some-mix")).headers["retry-after"] == "5"
    finally:
        await fast.stop()
        await runtime.aclose()
        await runtime.engine.dispose()


async def test_lean_path_observes_the_latency_histogram(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient, FastReads],
) -> None:
    full, lean, fast = apps
    mix = await _create(full)
    registry = fast.app.state.request_metrics.registry

    def count(route: str, status: str) -> float:
        labels = {"method": "GET", "route": route, "status": status}
        return registry.get_sample_value("mixhouse_http_request_duration_seconds_count", labels) or 0.0

    for _ in range(3):
        assert (await lean.get(mix["status_url"])).status_code == 200
    assert (await lean.get("/api/v1/mixes/nope")).status_code == 404
    assert (await lean.get("/api/v1/health")).status_code == 200
    assert count("/api/v1/mixes/{mix_id}", "200") == 3
    assert count("/api/v1/mixes/{mix_id}", "404") == 1
    assert count("/api/v1/health", "200") == 1


async def _changes(rt: Runtime, database_url: str, mix: dict[str, Any]) -> list[Callable[[], Awaitable[None]]]:
    """Every kind of write to the tables a status reads, each one committed on its own."""
    dep_ids: list[int] = []

    async def insert_deposit() -> None:
        dep_ids.append(await _add_deposit(rt, mix, 1, state="seen"))

    async def update_deposit() -> None:
        async with rt.engine.begin() as conn:
            await conn.execute(update(deposits).where(deposits.c.id == dep_ids[0]).values(confirmations=4))

    async def insert_payout() -> None:
        async with rt.engine.begin() as conn:
            await conn.execute(
                sends.insert().values(
                    kind="payout",
                    asset="JOBCOIN",
                    mix_id=mix["id"],
                    deposit_id=dep_ids[0],
                    from_address="mixhouse-pool",
                    to_address="f-1",
                    amount=COIN,
                    state="scheduled",
                    due_at=datetime.now(UTC),
                )
            )

    async def insert_refund() -> None:
        async with rt.engine.begin() as conn:
            await conn.execute(
                sends.insert().values(
                    kind="refund",
                    asset="JOBCOIN",
                    mix_id=mix["id"],
                    deposit_id=dep_ids[0],
                    from_address=mix["deposit_address"],
                    to_address="f-refund",
                    amount=COIN,
                    network_fee_reserved=0,
                    state="scheduled",
                    due_at=datetime.now(UTC),
                )
            )

    async def confirm_payout() -> None:
        async with rt.engine.begin() as conn:
            await conn.execute(
                update(sends).where((sends.c.mix_id == mix["id"]) & (sends.c.kind == "payout")).values(txid="t")
            )

    async def delete_sends() -> None:
        async with rt.engine.begin() as conn:
            await conn.execute(sends.delete().where(sends.c.mix_id == mix["id"]))

    async def update_mix() -> None:
        async with rt.engine.begin() as conn:
            await conn.execute(update(mixes).where(mixes.c.id == mix["id"]).values(state="mixing"))

    async def delete_deposit() -> None:
        async with rt.engine.begin() as conn:
            await conn.execute(deposits.delete().where(deposits.c.id == dep_ids[0]))

    async def truncate() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("TRUNCATE sends, deposits, mixes CASCADE")

    return [
        insert_deposit,
        update_deposit,
        insert_payout,
        insert_refund,
        confirm_payout,
        delete_sends,
        update_mix,
        delete_deposit,
        truncate,
    ]


async def test_a_read_after_a_heard_commit_never_returns_the_old_body(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient, FastReads], rt: Runtime, database_url: str
) -> None:
    full, lean, fast = apps
    mix = await _create(full)
    bodies = [(await lean.get(mix["status_url"])).content]
    assert fast.cache.get(mix["id"]) == bodies[0]
    for change in await _changes(rt, database_url, mix):
        heard = fast.cache.generation
        await change()
        await _until(lambda: fast.cache.generation > heard, f"the notification of {change.__name__}")  # noqa: B023
        assert fast.cache.get(mix["id"]) is None, change.__name__
        answer = await lean.get(mix["status_url"])
        _same(answer, await full.get(mix["status_url"]))
        assert answer.content != bodies[-1], change.__name__
        bodies.append(answer.content)
    assert (await lean.get(mix["status_url"])).status_code == 404  # truncated


async def test_a_rolled_back_change_evicts_nothing(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient, FastReads], rt: Runtime
) -> None:
    full, lean, fast = apps
    mix, other = await _create(full), await _create(full)
    body = (await lean.get(mix["status_url"])).content
    async with rt.engine.connect() as conn:
        await conn.execute(update(mixes).where(mixes.c.id == mix["id"]).values(state="mixing"))
        await conn.rollback()
    # A committed change of another mix, heard after: the rolled-back one was heard by then too.
    heard = fast.cache.generation
    await _add_deposit(rt, other, 0)
    await _until(lambda: fast.cache.generation > heard, "the other mix's notification")
    assert fast.cache.generation == heard + 1
    assert fast.cache.get(mix["id"]) == body


def test_a_body_read_while_a_change_arrived_is_not_stored() -> None:
    cache = StatusCache()
    assert cache.ticket() is None  # off until the feed listens
    assert not cache.put("m", b"old", cache.ticket())
    cache.feed_ready()
    ticket = cache.ticket()
    cache.mix_changed(mix_digest("another mix"))  # any change: the read may predate it
    assert not cache.put("m", b"old", ticket)
    assert cache.get("m") is None
    assert cache.put("m", b"new", cache.ticket())
    assert cache.get("m") == b"new"
    assert cache.get("m-other") is None
    ticket = cache.ticket()
    cache.feed_lost()
    cache.feed_ready()  # reconnected while the read ran: changes in between were not heard
    assert not cache.put("m", b"old", ticket)
    assert cache.put("m", b"new", cache.ticket())
    cache.mix_changed(EVERY_MIX)
    assert len(cache) == 0


def test_the_cache_is_bounded() -> None:
    cache = StatusCache(max_entries=3)
    cache.feed_ready()
    for n in range(5):
        assert cache.put(f"m{n}", b"body", cache.ticket())
    assert len(cache) == 3
    assert cache.get("m0") is None
    assert cache.get("m4") == b"body"


async def test_a_lost_feed_empties_and_disables_the_cache_until_it_listens_again(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient, FastReads], rt: Runtime, database_url: str
) -> None:
    full, lean, fast = apps
    assert fast.feed is not None
    mix = await _create(full)
    old = (await lean.get(mix["status_url"])).content
    assert len(fast.cache) == 1
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
        )
    await _until(lambda: not fast.cache.enabled, "the feed to notice its lost connection")
    assert len(fast.cache) == 0
    # A change while nobody listens, then reads: from the database, never stored.
    await _add_deposit(rt, mix, 0)
    if not fast.cache.enabled:
        answer = await lean.get(mix["status_url"])
        assert answer.content != old
        assert fast.cache.get(mix["id"]) is None or fast.cache.enabled
    await _until(lambda: fast.cache.enabled, "the feed to listen again")
    assert fast.feed.connected.is_set()
    answer = await lean.get(mix["status_url"])
    _same(answer, await full.get(mix["status_url"]))
    assert answer.content != old
    assert fast.cache.get(mix["id"]) == answer.content


async def test_the_status_cache_can_be_turned_off(database_url: str) -> None:
    # Where LISTEN cannot work (a pooler in transaction mode), every read goes to the database.
    settings = _settings(database_url).model_copy(update={"api_status_cache": False})
    fast = api_app(settings, database_url)
    await fast.start()
    try:
        assert fast.feed is None
        async with _client(fast.app) as full, _client(fast) as lean:
            mix = await _create(full)
            for _ in range(2):
                _same(await full.get(mix["status_url"]), await lean.get(mix["status_url"]))
        assert len(fast.cache) == 0
    finally:
        await fast.stop()
        await fast.rt.aclose()
        await fast.rt.engine.dispose()


async def test_lean_reads_survive_connections_killed_under_them(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient, FastReads], database_url: str
) -> None:
    # What a PostgreSQL restart does to the pools: every idle connection is dead. The lean
    # path retries on a fresh connection rather than answering 503.
    full, lean, fast = apps
    mix = await _create(full)
    assert (await lean.get("/api/v1/health")).status_code == 200
    assert (await lean.get(mix["status_url"])).status_code == 200
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    await _until(lambda: not fast.cache.enabled or len(fast.cache) == 0, "the feed to notice its lost connection")
    assert (await lean.get("/api/v1/health")).status_code == 200
    _same(await lean.get(mix["status_url"]), await full.get(mix["status_url"]))
