"""The HTTP API through ASGI, on a real PostgreSQL (one fresh database per test).

No chain is needed: Jobcoin and ETH deposit addresses are derived locally. Deposits and
sends are inserted directly where a test needs them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI, HTTPException
from pydantic import SecretStr
from sqlalchemy import func, select, update
from structlog.testing import capture_logs

from mixhouse import audit
from mixhouse.api.app import create_app
from mixhouse.api.problems import PROBLEM_MEDIA_TYPE, install_problem_handlers
from mixhouse.app.build import build_runtime
from mixhouse.config import Settings
from mixhouse.db.tables import deposits, mixes, reconciliations, sends
from mixhouse.errors import ChainError, IllegalTransition, InvalidAmount, NotFound, PayoutsPaused
from mixhouse.mixer.runtime import Runtime
from mixhouse.money import Asset

ADMIN_KEY = "test-admin-key-0123456789"
VALID_ETH = "0x52908400098527886E0F7030069857D2E4169EE7"  # EIP-55 test vector
BAD_CHECKSUM_ETH = "0x52908400098527886e0F7030069857D2E4169EE7"  # one letter's case flipped
BITCOIN = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
COIN = 10**8

MIX_KEYS = {
    "id",
    "asset",
    "state",
    "deposit_address",
    "fee_min_bps",
    "fee_max_bps",
    "fee_percent_range",
    "fee_explained",
    "max_wait_seconds",
    "min_deposit",
    "min_deposit_coins",
    "max_deposit",
    "max_deposit_coins",
    "delay_min_seconds",
    "delay_max_seconds",
    "expires_at",
    "created_at",
    "withdrawal_addresses",
    "status_url",
}


def _settings(database_url: str, *, evm: bool) -> Settings:
    return Settings(
        jobcoin_enabled=True,
        evm_enabled=evm,
        database_url=database_url,
        admin_api_key=SecretStr(ADMIN_KEY),
    )


async def _runtime(database_url: str, *, evm: bool) -> Runtime:
    return build_runtime(_settings(database_url, evm=evm), database_url, pool_size=2)


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    runtime = await _runtime(database_url, evm=False)
    yield runtime
    await runtime.aclose()
    await runtime.engine.dispose()


@pytest.fixture
async def eth_rt(database_url: str) -> AsyncIterator[Runtime]:
    runtime = await _runtime(database_url, evm=True)
    yield runtime
    await runtime.aclose()
    await runtime.engine.dispose()


@pytest.fixture
async def client(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture
async def eth_client(eth_rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(eth_rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem with ``status``; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["type"], str)
    assert body["type"]
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


async def count_mixes(rt: Runtime) -> int:
    async with rt.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(mixes))).scalar_one())


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    payload = {"asset": "JOBCOIN", "withdrawal_addresses": [f"user-{uuid.uuid4().hex[:8]}"], **body}
    response = await client.post("/api/v1/mixes", json=payload)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# -- creating and reading a mix --------------------------------------------------------------


async def test_create_and_read_jobcoin_mix(client: httpx.AsyncClient, rt: Runtime) -> None:
    response = await client.post(
        "/api/v1/mixes",
        json={
            "asset": "JOBCOIN",
            "withdrawal_addresses": ["alice-1", "alice-2"],
            "delay_min_seconds": 5,
            "delay_max_seconds": 60,
        },
    )
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    mix = response.json()
    assert set(mix) == MIX_KEYS
    assert len(mix["id"]) >= 32
    assert mix["asset"] == "JOBCOIN"
    assert mix["state"] == "awaiting_deposit"
    assert re.fullmatch(r"[0-9a-f]{24}", mix["deposit_address"])  # no "mix-": it does not announce itself
    assert mix["withdrawal_addresses"] == ["alice-1", "alice-2"]
    assert (mix["delay_min_seconds"], mix["delay_max_seconds"]) == (5, 60)
    assert (mix["fee_min_bps"], mix["fee_max_bps"]) == (rt.settings.fee_min_bps, rt.settings.fee_max_bps)
    assert mix["fee_percent_range"] == "0.5-5"
    assert mix["max_wait_seconds"] == 60 + rt.settings.privacy_max_extra_wait_seconds
    for key in ("min_deposit", "min_deposit_coins", "max_deposit", "max_deposit_coins"):
        assert isinstance(mix[key], str), key
    assert mix["min_deposit"] == str(rt.settings.jobcoin_min_deposit) == "100000000"
    assert mix["min_deposit_coins"] == "1"
    assert mix["max_deposit_coins"] == "1000000"
    assert mix["status_url"] == f"/api/v1/mixes/{mix['id']}"
    assert response.headers["location"] == mix["status_url"]
    assert datetime.fromisoformat(mix["expires_at"]) > datetime.now(UTC)

    read = await client.get(mix["status_url"])
    assert read.status_code == 200, read.text
    status = read.json()
    assert set(status) == MIX_KEYS | {"deposits", "payouts", "totals"}
    assert {k: status[k] for k in MIX_KEYS} == mix
    assert status["deposits"] == []
    assert status["payouts"] == []
    assert status["totals"] == {
        "deposited": "0",
        "deposited_coins": "0",
        "paid_out": "0",
        "paid_out_coins": "0",
        "pending": "0",
        "pending_coins": "0",
    }
    assert await count_mixes(rt) == 1


async def test_mix_ids_and_deposit_addresses_are_distinct(client: httpx.AsyncClient) -> None:
    made = [await create(client) for _ in range(3)]
    assert len({m["id"] for m in made}) == 3
    assert len({m["deposit_address"] for m in made}) == 3


async def test_read_mix_with_deposits_and_payouts(client: httpx.AsyncClient, rt: Runtime) -> None:
    mix = await create(client, withdrawal_addresses=["bob-1", "bob-2"])
    moment = datetime.now(UTC)
    async with rt.engine.begin() as conn:
        dep_id = (
            await conn.execute(
                deposits.insert()
                .values(
                    mix_id=mix["id"],
                    asset="JOBCOIN",
                    chain_ref=f"{mix['deposit_address']}#0",
                    deposit_address=mix["deposit_address"],
                    from_addresses=["sender"],
                    amount=50 * COIN,
                    state="pooled",
                    confirmations=1,
                    fee_amount=COIN // 2,
                    network_fee_amount=0,
                    payout_total=49 * COIN + COIN // 2,
                )
                .returning(deposits.c.id)
            )
        ).scalar_one()
        await conn.execute(
            deposits.insert().values(
                mix_id=mix["id"],
                asset="JOBCOIN",
                chain_ref=f"{mix['deposit_address']}#1",
                deposit_address=mix["deposit_address"],
                from_addresses=["other"],
                amount=7 * COIN,
                state="dropped",
            )
        )
        common = {
            "asset": "JOBCOIN",
            "mix_id": mix["id"],
            "deposit_id": dep_id,
            "due_at": moment,
        }
        await conn.execute(
            sends.insert().values(
                kind="sweep",
                from_address=mix["deposit_address"],
                to_address="mixhouse-pool",
                amount=50 * COIN,
                state="confirmed",
                **common,
            )
        )
        await conn.execute(
            sends.insert().values(
                kind="payout",
                from_address="mixhouse-pool",
                to_address="bob-1",
                amount=20 * COIN,
                state="confirmed",
                txid="tx-1",
                confirmed_at=moment,
                **common,
            )
        )
        await conn.execute(
            sends.insert().values(
                kind="payout",
                from_address="mixhouse-pool",
                to_address="bob-2",
                amount=29 * COIN + COIN // 2,
                state="scheduled",
                **common,
            )
        )
    status = (await client.get(mix["status_url"])).json()
    assert len(status["deposits"]) == 2
    dep = status["deposits"][0]
    assert dep["amount"] == "5000000000"
    assert dep["amount_coins"] == "50"
    assert dep["fee_amount"] == "50000000"
    assert dep["fee_amount_coins"] == "0.5"
    assert dep["payout_total"] == "4950000000"
    assert dep["payout_total_coins"] == "49.5"
    assert dep["from_addresses"] == ["sender"]
    assert dep["state"] == "pooled"
    assert dep["reason"] is None
    assert {"id", "confirmations", "network_fee_amount", "created_at"} <= set(dep)
    assert status["deposits"][1]["fee_amount"] is None
    # Only payouts, not the sweep.
    assert [p["to_address"] for p in status["payouts"]] == ["bob-1", "bob-2"]
    first, second = status["payouts"]
    assert set(first) == {
        "id",
        "to_address",
        "amount",
        "amount_coins",
        "state",
        "due_at",
        "txid",
        "confirmed_at",
    }
    assert (first["amount_coins"], first["state"], first["txid"]) == ("20", "confirmed", "tx-1")
    assert first["confirmed_at"] is not None
    assert (second["amount"], second["amount_coins"], second["txid"]) == ("2950000000", "29.5", None)
    assert status["totals"] == {
        "deposited": "5000000000",
        "deposited_coins": "50",
        "paid_out": "2000000000",
        "paid_out_coins": "20",
        "pending": "2950000000",
        "pending_coins": "29.5",
    }


async def test_unknown_mix_is_404_problem(client: httpx.AsyncClient) -> None:
    for mix_id in ("nope", "x" * 32, "%20", "a" * 500):
        body = assert_problem(await client.get(f"/api/v1/mixes/{mix_id}"), 404)
        assert body["type"].endswith("not-found")
        assert body["instance"].startswith("/api/v1/mixes/")


async def test_eth_mix(eth_client: httpx.AsyncClient, eth_rt: Runtime) -> None:
    mix = await create(eth_client, asset="ETH", withdrawal_addresses=[VALID_ETH, VALID_ETH.lower()[:-1] + "8"])
    assert mix["asset"] == "ETH"
    assert mix["deposit_address"].startswith("0x")
    assert len(mix["deposit_address"]) == 42
    # Lower-case input comes back checksummed.
    assert mix["withdrawal_addresses"][0] == VALID_ETH
    assert mix["withdrawal_addresses"][1] != VALID_ETH.lower()[:-1] + "8"
    assert mix["min_deposit"] == str(eth_rt.settings.evm_min_deposit)
    assert mix["min_deposit_coins"] == "0.01"
    assert mix["max_deposit_coins"] == "1000"


async def test_assets_list_what_can_be_mixed(eth_client: httpx.AsyncClient, eth_rt: Runtime) -> None:
    response = await eth_client.get("/api/v1/assets")
    assert response.status_code == 200
    items = {item["asset"]: item for item in response.json()["items"]}
    assert list(items) == ["JOBCOIN", "ETH"]
    assert items["ETH"]["decimals"] == 18
    assert items["ETH"]["contract"] is None
    assert items["ETH"]["min_deposit"] == str(eth_rt.settings.evm_min_deposit)
    assert items["ETH"]["min_deposit_coins"] == "0.01"
    assert items["ETH"]["confirmations"] == eth_rt.settings.evm_confirmations
    assert items["JOBCOIN"]["chain"] == "jobcoin"


@pytest.mark.parametrize("asset", ["DOGE", "USDT", "eth", "E", "ETH\u0000"])
async def test_unknown_asset_is_422(client: httpx.AsyncClient, rt: Runtime, asset: str) -> None:
    assert_problem(await client.post("/api/v1/mixes", json={"asset": asset, "withdrawal_addresses": [VALID_ETH]}), 422)
    assert await count_mixes(rt) == 0


async def test_eth_disabled_is_422(client: httpx.AsyncClient, rt: Runtime) -> None:
    body = assert_problem(
        await client.post("/api/v1/mixes", json={"asset": "ETH", "withdrawal_addresses": [VALID_ETH]}), 422
    )
    assert "not enabled" in body["detail"]
    assert await count_mixes(rt) == 0


# -- refused input: a 4xx problem and no mix row ---------------------------------------------

JSON_HEADERS = {"content-type": "application/json"}

BAD_JOBCOIN: list[tuple[str, dict[str, Any], int]] = [
    ("malformed json", {"content": b'{"asset": "JOBCOIN", ', "headers": JSON_HEADERS}, 400),
    ("not json at all", {"content": b"asset=JOBCOIN", "headers": JSON_HEADERS}, 400),
    ("array body", {"json": ["JOBCOIN", ["alice"]]}, 422),
    ("string body", {"json": "JOBCOIN"}, 422),
    ("number body", {"json": 42}, 422),
    ("null body", {"json": None}, 422),
    ("empty body", {"content": b"", "headers": JSON_HEADERS}, 422),
    ("form body", {"data": {"asset": "JOBCOIN", "withdrawal_addresses": "alice"}}, 422),
    ("missing withdrawal_addresses", {"json": {"asset": "JOBCOIN"}}, 422),
    ("missing asset", {"json": {"withdrawal_addresses": ["alice"]}}, 422),
    ("empty address list", {"json": {"asset": "JOBCOIN", "withdrawal_addresses": []}}, 422),
    (
        "11 addresses",
        {"json": {"asset": "JOBCOIN", "withdrawal_addresses": [f"a{i}" for i in range(11)]}},
        422,
    ),
    (
        "51 addresses",
        {"json": {"asset": "JOBCOIN", "withdrawal_addresses": [f"a{i}" for i in range(51)]}},
        422,
    ),
    (
        "duplicate addresses",
        {"json": {"asset": "JOBCOIN", "withdrawal_addresses": ["alice", "bob", "alice"]}},
        422,
    ),
    ("empty address", {"json": {"asset": "JOBCOIN", "withdrawal_addresses": [""]}}, 422),
    ("padded address", {"json": {"asset": "JOBCOIN", "withdrawal_addresses": [" alice"]}}, 422),
    ("huge address", {"json": {"asset": "JOBCOIN", "withdrawal_addresses": ["a" * 300]}}, 422),
    ("unknown asset", {"json": {"asset": "DOGE", "withdrawal_addresses": ["alice"]}}, 422),
    # Decision: asset names are case-sensitive; "jobcoin" is refused, not guessed.
    ("lower-case asset", {"json": {"asset": "jobcoin", "withdrawal_addresses": ["alice"]}}, 422),
    (
        "negative delay",
        {"json": {"asset": "JOBCOIN", "withdrawal_addresses": ["a"], "delay_min_seconds": -1}},
        422,
    ),
    (
        "delay_min > delay_max",
        {
            "json": {
                "asset": "JOBCOIN",
                "withdrawal_addresses": ["a"],
                "delay_min_seconds": 100,
                "delay_max_seconds": 10,
            }
        },
        422,
    ),
    (
        "delay above the maximum",
        {"json": {"asset": "JOBCOIN", "withdrawal_addresses": ["a"], "delay_max_seconds": 72 * 3600 + 1}},
        422,
    ),
    (
        "delay overflowing an integer column",
        {"json": {"asset": "JOBCOIN", "withdrawal_addresses": ["a"], "delay_max_seconds": 10**30}},
        422,
    ),
    ("pool address", {"json": {"asset": "JOBCOIN", "withdrawal_addresses": ["mixhouse-pool"]}}, 422),
    ("unknown field", {"json": {"asset": "JOBCOIN", "withdrawal_addresses": ["a"], "amount": "10"}}, 422),
    (
        "delay as string",
        {"json": {"asset": "JOBCOIN", "withdrawal_addresses": ["a"], "delay_min_seconds": "60"}},
        422,
    ),
    (
        "delay as float",
        {"json": {"asset": "JOBCOIN", "withdrawal_addresses": ["a"], "delay_min_seconds": 60.0}},
        422,
    ),
    (
        "delay as bool",
        {"json": {"asset": "JOBCOIN", "withdrawal_addresses": ["a"], "delay_max_seconds": True}},
        422,
    ),
    ("addresses as string", {"json": {"asset": "JOBCOIN", "withdrawal_addresses": "alice"}}, 422),
    ("address as number", {"json": {"asset": "JOBCOIN", "withdrawal_addresses": [123]}}, 422),
    ("addresses as object", {"json": {"asset": "JOBCOIN", "withdrawal_addresses": {"a": "b"}}}, 422),
    ("asset as number", {"json": {"asset": 1, "withdrawal_addresses": ["a"]}}, 422),
    ("asset as list", {"json": {"asset": ["JOBCOIN"], "withdrawal_addresses": ["a"]}}, 422),
]


@pytest.mark.parametrize(("case", "request_kwargs", "status"), BAD_JOBCOIN, ids=[c[0] for c in BAD_JOBCOIN])
async def test_bad_input_is_refused(
    client: httpx.AsyncClient, rt: Runtime, case: str, request_kwargs: dict[str, Any], status: int
) -> None:
    before = await count_mixes(rt)
    body = assert_problem(await client.post("/api/v1/mixes", **request_kwargs), status)
    assert body["instance"] == "/api/v1/mixes"
    assert await count_mixes(rt) == before == 0


BAD_ETH: list[tuple[str, list[Any]]] = [
    ("bad EIP-55 checksum", [BAD_CHECKSUM_ETH]),
    ("bitcoin address", [BITCOIN]),
    ("39 hex digits", [VALID_ETH[:-1]]),
    ("no 0x", [VALID_ETH[2:]]),
    ("zero address", ["0x" + "0" * 40]),
    ("same address twice, different case", [VALID_ETH, VALID_ETH.lower()]),
    ("one good one bad", [VALID_ETH, BAD_CHECKSUM_ETH]),
]


@pytest.mark.parametrize(("case", "addresses"), BAD_ETH, ids=[c[0] for c in BAD_ETH])
async def test_bad_eth_addresses_are_refused(
    eth_client: httpx.AsyncClient, eth_rt: Runtime, case: str, addresses: list[Any]
) -> None:
    response = await eth_client.post("/api/v1/mixes", json={"asset": "ETH", "withdrawal_addresses": addresses})
    assert_problem(response, 422)
    assert await count_mixes(eth_rt) == 0


async def test_lower_case_eth_asset_is_refused(eth_client: httpx.AsyncClient, eth_rt: Runtime) -> None:
    body = assert_problem(
        await eth_client.post("/api/v1/mixes", json={"asset": "eth", "withdrawal_addresses": [VALID_ETH]}),
        422,
    )
    assert body["errors"][0]["loc"] == ["body", "asset"]
    assert await count_mixes(eth_rt) == 0


async def test_eth_pool_address_is_refused(eth_client: httpx.AsyncClient, eth_rt: Runtime) -> None:
    pool = eth_rt.adapters[Asset.ETH].pool_address
    for address in (pool, pool.lower()):
        body = assert_problem(
            await eth_client.post("/api/v1/mixes", json={"asset": "ETH", "withdrawal_addresses": [address]}),
            422,
        )
        assert body["type"].endswith("invalid-address")
    assert await count_mixes(eth_rt) == 0


async def test_existing_deposit_address_is_refused(eth_client: httpx.AsyncClient, eth_rt: Runtime) -> None:
    jobcoin = await create(eth_client)
    eth = await create(eth_client, asset="ETH", withdrawal_addresses=[VALID_ETH])
    assert await count_mixes(eth_rt) == 2
    for asset, address in (
        ("JOBCOIN", jobcoin["deposit_address"]),
        ("ETH", eth["deposit_address"]),
        ("ETH", eth["deposit_address"].lower()),
    ):
        body = assert_problem(
            await eth_client.post("/api/v1/mixes", json={"asset": asset, "withdrawal_addresses": [address]}),
            422,
        )
        assert body["type"].endswith("invalid-address"), body
    assert await count_mixes(eth_rt) == 2


async def test_validation_problem_lists_field_errors(client: httpx.AsyncClient) -> None:
    body = assert_problem(
        await client.post(
            "/api/v1/mixes",
            json={"asset": "doge", "withdrawal_addresses": [1], "delay_min_seconds": "5", "extra": True},
        ),
        422,
    )
    assert body["type"].endswith("validation")
    locs = {tuple(err["loc"]) for err in body["errors"]}
    assert ("body", "asset") in locs
    assert ("body", "withdrawal_addresses", 0) in locs
    assert ("body", "delay_min_seconds") in locs
    assert ("body", "extra") in locs
    for err in body["errors"]:
        assert set(err) == {"loc", "msg", "type"}


async def test_http_errors_are_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/api/v1/nothing-here"), 404)
    response = await client.delete("/api/v1/mixes")
    body = assert_problem(response, 405)
    assert body["type"] == "about:blank"
    assert "POST" in response.headers["allow"]


# -- admin -----------------------------------------------------------------------------------

ADMIN_PATHS = ["/api/v1/admin/mixes", "/api/v1/admin/deposits", "/api/v1/admin/pool", "/api/v1/admin/audit"]


@pytest.mark.parametrize("path", ADMIN_PATHS)
async def test_admin_requires_the_key(client: httpx.AsyncClient, path: str) -> None:
    assert_problem(await client.get(path), 401)
    for wrong in ("", "wrong", ADMIN_KEY + "x", ADMIN_KEY[:-1], "dev-admin-key-change-me"):
        assert_problem(await client.get(path, headers={"X-API-Key": wrong}), 401)
    assert_problem(await client.get(path, headers={b"X-API-Key": "ключ".encode()}), 401)
    ok = await client.get(path, headers={"X-API-Key": ADMIN_KEY})
    assert ok.status_code == 200, ok.text


async def test_admin_mixes_pagination(client: httpx.AsyncClient, rt: Runtime) -> None:
    made = {(await create(client))["id"] for _ in range(7)}
    # Ties on created_at must be broken by id: give four mixes the same timestamp.
    tied = sorted(made)[:4]
    async with rt.engine.begin() as conn:
        await conn.execute(
            update(mixes).where(mixes.c.id.in_(tied)).values(created_at=datetime(2024, 1, 1, tzinfo=UTC))
        )
    headers = {"X-API-Key": ADMIN_KEY}
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if after is not None:
            params["after"] = after
        response = await client.get("/api/v1/admin/mixes", params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 3
        seen.extend(item["id"] for item in page["items"])
        pages += 1
        after = page["next_after"]
        if after is None:
            break
        assert pages < 10
    assert len(seen) == len(set(seen)) == 7
    assert set(seen) == made
    assert pages == 3
    item = page["items"][0]
    assert MIX_KEYS | {"updated_at", "watch_until"} == set(item)
    # State filter and bad parameters.
    filtered = (await client.get("/api/v1/admin/mixes", params={"state": "expired"}, headers=headers)).json()
    assert filtered == {"items": [], "next_after": None}
    for params in ({"limit": 0}, {"limit": 501}, {"state": "bogus"}, {"after": "not-a-cursor"}):
        assert_problem(await client.get("/api/v1/admin/mixes", params=params, headers=headers), 422)


async def _insert_deposit(rt: Runtime, mix: dict[str, Any], n: int, state: str, reason: str | None) -> int:
    async with rt.engine.begin() as conn:
        return int(
            (
                await conn.execute(
                    deposits.insert()
                    .values(
                        mix_id=mix["id"],
                        asset="JOBCOIN",
                        chain_ref=f"{mix['deposit_address']}#{n}",
                        deposit_address=mix["deposit_address"],
                        from_addresses=["someone"],
                        amount=(n + 1) * COIN,
                        state=state,
                        reason=reason,
                        fee_amount=COIN // 100 if state == "pooled" else None,
                    )
                    .returning(deposits.c.id)
                )
            ).scalar_one()
        )


async def test_admin_deposits(client: httpx.AsyncClient, rt: Runtime) -> None:
    mix = await create(client)
    await _insert_deposit(rt, mix, 0, "frozen", "sender on the OFAC list")
    await _insert_deposit(rt, mix, 1, "held", "above max_deposit")
    await _insert_deposit(rt, mix, 2, "pooled", None)
    headers = {"X-API-Key": ADMIN_KEY}
    response = await client.get(
        "/api/v1/admin/deposits", params=[("state", "frozen"), ("state", "held")], headers=headers
    )
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [(d["state"], d["reason"], d["mix_id"]) for d in items] == [
        ("held", "above max_deposit", mix["id"]),
        ("frozen", "sender on the OFAC list", mix["id"]),
    ]
    assert items[0]["amount"] == "200000000"
    assert items[0]["amount_coins"] == "2"
    everything = (await client.get("/api/v1/admin/deposits", params={"limit": 2}, headers=headers)).json()
    assert len(everything["items"]) == 2
    rest = (
        await client.get(
            "/api/v1/admin/deposits", params={"limit": 2, "after": everything["next_after"]}, headers=headers
        )
    ).json()
    assert [d["state"] for d in rest["items"]] == ["frozen"]
    assert rest["next_after"] is None
    assert_problem(await client.get("/api/v1/admin/deposits", params={"state": "nope"}, headers=headers), 422)


async def test_admin_pool(client: httpx.AsyncClient, rt: Runtime) -> None:
    headers = {"X-API-Key": ADMIN_KEY}
    empty = (await client.get("/api/v1/admin/pool", headers=headers)).json()
    assert empty["pools"] == [
        {
            "asset": "JOBCOIN",
            "pool_address": "mixhouse-pool",
            "books": "0",
            "books_coins": "0",
            "fees_earned": "0",
            "fees_earned_coins": "0",
            "scheduled_payouts": "0",
            "scheduled_payouts_coins": "0",
            "in_flight_payouts": "0",
            "in_flight_payouts_coins": "0",
            "reconciliation": None,
            "payouts_paused": False,
        }
    ]
    mix = await create(client)
    dep_id = await _insert_deposit(rt, mix, 0, "pooled", None)
    moment = datetime.now(UTC)
    common = {"asset": "JOBCOIN", "mix_id": mix["id"], "deposit_id": dep_id, "due_at": moment}
    async with rt.engine.begin() as conn:
        await conn.execute(
            sends.insert().values(
                kind="sweep",
                from_address=mix["deposit_address"],
                to_address="mixhouse-pool",
                amount=10 * COIN,
                state="confirmed",
                **common,
            )
        )
        await conn.execute(
            sends.insert().values(
                kind="payout",
                from_address="mixhouse-pool",
                to_address="u1",
                amount=3 * COIN,
                state="confirmed",
                network_fee_paid=0,
                **common,
            )
        )
        await conn.execute(
            sends.insert().values(
                kind="payout",
                from_address="mixhouse-pool",
                to_address="u2",
                amount=2 * COIN,
                state="scheduled",
                **common,
            )
        )
        await conn.execute(
            sends.insert().values(
                kind="payout",
                from_address="mixhouse-pool",
                to_address="u3",
                amount=COIN,
                state="broadcast",
                **common,
            )
        )
        await conn.execute(
            reconciliations.insert().values(
                asset="JOBCOIN",
                checked_at=moment,
                pool_address="mixhouse-pool",
                expected=7 * COIN,
                actual=6 * COIN,
                ok=False,
                detail="deficit of 100000000 base units",
            )
        )
    pool = (await client.get("/api/v1/admin/pool", headers=headers)).json()["pools"][0]
    assert pool["books"] == "700000000"
    assert pool["books_coins"] == "7"
    assert pool["fees_earned"] == "1000000"
    assert pool["fees_earned_coins"] == "0.01"
    assert pool["scheduled_payouts_coins"] == "2"
    assert pool["in_flight_payouts_coins"] == "1"
    assert pool["payouts_paused"] is True
    recon = pool["reconciliation"]
    assert recon["ok"] is False
    assert recon["detail"] == "deficit of 100000000 base units"
    assert (recon["expected"], recon["actual_coins"]) == ("700000000", "6")
    assert recon["checked_at"]


async def test_admin_audit(client: httpx.AsyncClient, rt: Runtime) -> None:
    first = await create(client)
    await create(client)
    await audit.seal(rt.engine)  # the worker's sealer chains entries within a second; here, now
    headers = {"X-API-Key": ADMIN_KEY}
    everything = (await client.get("/api/v1/admin/audit", headers=headers)).json()["items"]
    assert len(everything) >= 2
    response = await client.get(
        "/api/v1/admin/audit", params={"entity_type": "mix", "entity_id": first["id"]}, headers=headers
    )
    items = response.json()["items"]
    assert [i["action"] for i in items] == ["mix.created"]
    entry = items[0]
    assert entry["entity_id"] == first["id"]
    assert len(entry["hash"]) == 64
    assert int(entry["hash"], 16) >= 0
    assert len(entry["prev_hash"]) == 64
    assert entry["details"]["deposit_address"] == first["deposit_address"]
    # The chain links: each entry's prev_hash is the previous entry's hash (newest first).
    assert everything[0]["prev_hash"] == everything[1]["hash"]
    page = (await client.get("/api/v1/admin/audit", params={"limit": 1}, headers=headers)).json()
    assert len(page["items"]) == 1
    assert page["next_after"] == page["items"][0]["id"]


# -- health, OpenAPI, 500 ---------------------------------------------------------------------


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": True, "signers": []}


async def test_openapi_docs(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["info"]["title"] == "Mixhouse"
    assert "/api/v1/mixes" in spec["paths"]
    assert (await client.get("/docs")).status_code == 200


async def test_database_failure_is_an_opaque_500(client: httpx.AsyncClient, database_url: str) -> None:
    mix = await create(client)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE sends CASCADE")
    with capture_logs() as logs:
        response = await client.get(mix["status_url"])
    body = assert_problem(response, 500)
    assert set(body) == {"type", "title", "status", "detail", "instance", "error_id"}
    uuid.UUID(body["error_id"])
    assert "sends" not in response.text
    assert "psycopg" not in response.text.lower()
    logged = [e for e in logs if e.get("error_id") == body["error_id"]]
    assert len(logged) == 1
    assert logged[0]["exc_info"] is not None


def _tiny_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("password=hunter2 at /srv/secret.py")

    @app.get("/chain")
    async def chain() -> None:
        raise ChainError("http://10.0.0.5:8545 timed out")

    @app.get("/paused")
    async def paused() -> None:
        raise PayoutsPaused("ETH payouts are paused: pool mismatch")

    @app.get("/conflict")
    async def conflict() -> None:
        raise IllegalTransition("mixes m1 is not in state 'mixing'")

    @app.get("/amount")
    async def amount() -> None:
        raise InvalidAmount("amount '1e5' is not a plain positive decimal number")

    @app.get("/missing")
    async def missing() -> None:
        raise NotFound("no such thing")

    @app.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(status_code=418, detail="short and stout")

    return app


async def test_handlers_on_a_tiny_app() -> None:
    transport = httpx.ASGITransport(app=_tiny_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://tiny") as http:
        with capture_logs() as logs:
            response = await http.get("/boom")
        body = assert_problem(response, 500)
        assert "hunter2" not in response.text
        assert "RuntimeError" not in response.text
        assert body["instance"] == "/boom"
        error_id = body["error_id"]
        uuid.UUID(error_id)
        logged = [e for e in logs if e.get("error_id") == error_id]
        assert len(logged) == 1
        assert isinstance(logged[0]["exc_info"], RuntimeError)
        # A second failure gets its own id.
        assert (await http.get("/boom")).json()["error_id"] != error_id

        chain = assert_problem(await http.get("/chain"), 502)
        assert "10.0.0.5" not in chain["detail"]
        assert "paused" in assert_problem(await http.get("/paused"), 503)["detail"]
        assert assert_problem(await http.get("/conflict"), 409)["type"].endswith("conflict")
        assert assert_problem(await http.get("/amount"), 422)["type"].endswith("invalid-amount")
        assert assert_problem(await http.get("/missing"), 404)["detail"] == "no such thing"
        teapot = assert_problem(await http.get("/teapot"), 418)
        assert teapot["detail"] == "short and stout"


async def test_expired_listing_uses_state_filter(client: httpx.AsyncClient, rt: Runtime) -> None:
    mix = await create(client)
    await create(client)
    async with rt.engine.begin() as conn:
        await conn.execute(
            update(mixes)
            .where(mixes.c.id == mix["id"])
            .values(state="expired", expires_at=datetime.now(UTC) - timedelta(hours=1))
        )
    page = (
        await client.get("/api/v1/admin/mixes", params={"state": "expired"}, headers={"X-API-Key": ADMIN_KEY})
    ).json()
    assert [m["id"] for m in page["items"]] == [mix["id"]]
    assert page["items"][0]["state"] == "expired"
