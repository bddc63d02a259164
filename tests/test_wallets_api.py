"""Wallet API, users and keys, and the wallet store, on a real PostgreSQL (fresh DB per test).

History rows are inserted with :func:`mixhouse.wallets.store.upsert_address_txs` (what the
sync engine will call); no chain is needed.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from sqlalchemy import NullPool, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from typer.testing import CliRunner

from mixhouse.api.app import create_app
from mixhouse.api.problems import PROBLEM_MEDIA_TYPE
from mixhouse.app.build import build_runtime
from mixhouse.cli import app as cli_app
from mixhouse.config import Settings
from mixhouse.db.engine import sqlalchemy_url
from mixhouse.db.tables import address_balances, address_txs, api_keys, chain_txs, wallet_addresses
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.screening import Screener
from mixhouse.wallets import service, store
from mixhouse.wallets.records import AddressTx, Direction, Leg

ADMIN_KEY = "test-admin-key-0123456789"
ETH = "0x52908400098527886E0F7030069857D2E4169EE7"  # EIP-55 test vector
ETH_2 = "0x8617E340B3D01FA5F11F306F4090FD50E238070D"  # EIP-55 test vector (all caps)
ETH_2_CHECKSUMMED = "0x8617E340B3D01FA5F11F306F4090FD50E238070D"
ETH_3 = "0xde709f2102306220921060314715629080e2fb77"  # lower-case, no checksum
ETH_3_CHECKSUMMED = "0xde709f2102306220921060314715629080e2fb77"  # its EIP-55 form is all lower-case
ETH_4 = "0x27b1fdb04752bbc536007a920d24acb045561c26"
ETH_4_CHECKSUMMED = "0x27b1fdb04752bbc536007a920d24acb045561c26"
ETH_5 = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
ETH_5_CHECKSUMMED = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
BAD_CHECKSUM_ETH = "0x52908400098527886e0F7030069857D2E4169EE7"  # one letter's case flipped
BTC_REGTEST = "bcrt1qqqqsyqcyq5rqwzqfpg9scrgwpugpzysnard0ew"
BTC_MAINNET = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
BTC_TESTNET_BECH32 = "tb1qqqqsyqcyq5rqwzqfpg9scrgwpugpzysnl25zw8"
OTHER = "0x000000000000000000000000000000000000dEaD"
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _settings(database_url: str) -> Settings:
    return Settings(
        jobcoin_enabled=True, evm_enabled=False, database_url=database_url, admin_api_key=SecretStr(ADMIN_KEY)
    )


@dataclass
class Actors:
    alice: service.User
    alice_key: str
    alice_key_id: int
    bob: service.User
    bob_key: str
    root: service.User
    root_key: str

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    runtime = build_runtime(_settings(database_url), database_url, pool_size=2)
    yield runtime
    await runtime.aclose()
    await runtime.engine.dispose()


@pytest.fixture
async def client(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def _make_actors(engine: AsyncEngine) -> Actors:
    alice = await service.create_user(engine, "alice")
    bob = await service.create_user(engine, "bob")
    root = await service.create_user(engine, "root", is_admin=True)
    alice_key_id, alice_key = await service.create_api_key(engine, alice.id, label="laptop")
    _, bob_key = await service.create_api_key(engine, bob.id)
    _, root_key = await service.create_api_key(engine, root.id)
    return Actors(alice, alice_key, alice_key_id, bob, bob_key, root, root_key)


@pytest.fixture
async def actors(rt: Runtime) -> Actors:
    return await _make_actors(rt.engine)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


async def _wallet(client: httpx.AsyncClient, key: str, name: str = "main") -> int:
    r = await client.post("/api/v1/wallets", json={"name": name}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def _import(
    client: httpx.AsyncClient, key: str, wallet_id: int, chain: str, addresses: list[str]
) -> httpx.Response:
    return await client.post(
        f"/api/v1/wallets/{wallet_id}/addresses",
        json={"chain": chain, "addresses": addresses},
        headers={"X-API-Key": key},
    )


def tx(
    txid: str,
    *,
    address: str = ETH,
    direction: str = "in",
    amount: int = 1000,
    when: datetime | None = T0,
    height: int | None = 100,
    fee: int | None = 21,
    asset: str = "ETH",
    chain: str = "ETH",
) -> AddressTx:
    """A history row of ``address``: received ``amount`` (in), sent it (out) or sent to itself."""
    me, other = address, OTHER
    if direction == "in":
        inputs, outputs, net = (Leg(0, other, amount, asset),), (Leg(0, me, amount, asset),), amount
    elif direction == "out":
        inputs, outputs, net = (Leg(0, me, amount, asset),), (Leg(0, other, amount, asset),), -amount - (fee or 0)
    else:
        inputs, outputs, net = (Leg(0, me, amount, asset),), (Leg(0, me, amount, asset),), -(fee or 0)
    return AddressTx(
        chain=chain,
        address=address,
        txid=txid,
        inputs=inputs,
        outputs=outputs,
        net=net,
        asset=asset,
        fee=fee,
        block_height=height,
        block_hash=None if height is None else f"hash{height}",
        block_time=when if height is not None else None,
    )


async def _upsert(engine: AsyncEngine, txs: list[AddressTx]) -> int:
    async with engine.begin() as conn:
        return await store.upsert_address_txs(conn, txs)


async def _stored(engine: AsyncEngine, txid: str, address: str = ETH) -> dict[str, Any]:
    """The address's row of ``txid`` with the transaction's legs and fee (from ``chain_txs``)."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(address_txs, chain_txs.c.fee, chain_txs.c.inputs, chain_txs.c.outputs)
                .join(chain_txs, (chain_txs.c.chain == address_txs.c.chain) & (chain_txs.c.txid == address_txs.c.txid))
                .where(address_txs.c.txid == txid, address_txs.c.address == address)
            )
        ).one()
    return dict(row._mapping)


async def _pages(client: httpx.AsyncClient, key: str, wallet_id: int, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = dict(params)
        if cursor is not None:
            query["cursor"] = cursor
        r = await client.get(f"/api/v1/wallets/{wallet_id}/transactions", params=query, headers={"X-API-Key": key})
        assert r.status_code == 200, r.text
        body = r.json()
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items


# -- users and keys --------------------------------------------------------------------------


async def test_keys_are_hashed_and_shown_once(rt: Runtime, actors: Actors) -> None:
    assert actors.alice_key.startswith("mh_")
    assert len(actors.alice_key) == 3 + 43
    async with rt.engine.connect() as conn:
        stored = (await conn.execute(select(api_keys.c.key_hash))).scalars().all()
    assert service.hash_key(actors.alice_key) in [bytes(h) for h in stored]
    assert all(actors.alice_key.encode() not in bytes(h) for h in stored)
    assert await service.authenticate(rt.engine, actors.alice_key) == actors.alice
    assert await service.authenticate(rt.engine, actors.alice_key + "x") is None
    with pytest.raises(service.AlreadyExists):
        await service.create_user(rt.engine, "alice")


async def test_authentication(client: httpx.AsyncClient, rt: Runtime, actors: Actors) -> None:
    body = assert_problem(await client.get("/api/v1/wallets"), 401)
    assert "API key" in body["detail"]
    assert_problem(await client.get("/api/v1/wallets", headers={"Authorization": "Bearer mh_wrong"}), 401)
    assert_problem(await client.get("/api/v1/wallets", headers={"X-API-Key": "nope"}), 401)
    # The operator's admin key is not a user key.
    assert_problem(await client.get("/api/v1/wallets", headers={"X-API-Key": ADMIN_KEY}), 401)
    assert (await client.get("/api/v1/wallets", headers=actors.auth(actors.alice_key))).status_code == 200
    assert (await client.get("/api/v1/wallets", headers={"X-API-Key": actors.alice_key})).status_code == 200

    await service.revoke_api_key(rt.engine, actors.alice_key_id)
    assert_problem(await client.get("/api/v1/wallets", headers=actors.auth(actors.alice_key)), 401)
    assert_problem(await client.get("/api/v1/wallets", headers={"X-API-Key": actors.alice_key}), 401)
    # A new key for the same user works.
    _, fresh = await service.create_api_key(rt.engine, actors.alice.id)
    assert (await client.get("/api/v1/wallets", headers=actors.auth(fresh))).status_code == 200


async def test_isolation_and_admin(client: httpx.AsyncClient, actors: Actors) -> None:
    a_wallet = await _wallet(client, actors.alice_key, "savings")
    b_wallet = await _wallet(client, actors.bob_key, "savings")  # same name, other user: fine
    dup = await client.post("/api/v1/wallets", json={"name": "savings"}, headers=actors.auth(actors.alice_key))
    assert_problem(dup, 409)

    bob = actors.auth(actors.bob_key)
    for path in ("", "/addresses", "/transactions"):
        body = assert_problem(await client.get(f"/api/v1/wallets/{a_wallet}{path}", headers=bob), 404)
        # Indistinguishable from a wallet that does not exist.
        missing = assert_problem(await client.get(f"/api/v1/wallets/999999{path}", headers=bob), 404)
        assert body["title"] == missing["title"]
    assert_problem(await _import(client, actors.bob_key, a_wallet, "ETH", [ETH]), 404)

    listed = (await client.get("/api/v1/wallets", headers=bob)).json()["items"]
    assert [w["id"] for w in listed] == [b_wallet]

    root = actors.auth(actors.root_key)
    all_ids = [w["id"] for w in (await client.get("/api/v1/wallets", headers=root)).json()["items"]]
    assert all_ids == [a_wallet, b_wallet]
    got = await client.get(f"/api/v1/wallets/{a_wallet}", headers=root)
    assert got.status_code == 200
    assert got.json()["user_id"] == actors.alice.id
    assert (await client.get(f"/api/v1/wallets/{a_wallet}/transactions", headers=root)).status_code == 200

    created = await client.post("/api/v1/wallets", json={"name": "x"}, headers=actors.auth(actors.alice_key))
    assert created.headers["Location"] == f"/api/v1/wallets/{created.json()['id']}"


async def test_import_validation(client: httpx.AsyncClient, rt: Runtime, actors: Actors) -> None:
    wallet = await _wallet(client, actors.alice_key)

    async def count() -> int:
        async with rt.engine.connect() as conn:
            return len((await conn.execute(select(wallet_addresses.c.id))).all())

    # One bad EIP-55 checksum: nothing imported, the problem names it.
    r = await _import(client, actors.alice_key, wallet, "ETH", [ETH, ETH_5, BAD_CHECKSUM_ETH])
    body = assert_problem(r, 422)
    assert BAD_CHECKSUM_ETH in body["detail"]
    assert "checksum" in body["detail"]
    assert await count() == 0

    # Wrong-network Bitcoin addresses (the operator runs regtest).
    for wrong in (BTC_MAINNET, BTC_TESTNET_BECH32):
        r = await _import(client, actors.alice_key, wallet, "BTC", [BTC_REGTEST, wrong])
        assert wrong in assert_problem(r, 422)["detail"]
    assert await count() == 0

    assert_problem(await _import(client, actors.alice_key, wallet, "ETH", []), 422)
    assert_problem(await _import(client, actors.alice_key, wallet, "ETH", [ETH] * 1001), 422)
    assert_problem(await _import(client, actors.alice_key, wallet, "DOGE", [ETH]), 422)
    assert_problem(await _import(client, actors.alice_key, wallet, "ETH", ["0x1234"]), 422)
    assert_problem(await _import(client, actors.alice_key, wallet, "JOBCOIN", ["bad\x00name"]), 422)

    # Valid: lower-case is accepted and checksummed; duplicates are ignored.
    r = await _import(client, actors.alice_key, wallet, "ETH", [ETH, ETH_5, ETH_5, ETH_5_CHECKSUMMED])
    assert r.status_code == 200, r.text
    assert r.json() == {"chain": "ETH", "added": [ETH, ETH_5_CHECKSUMMED], "already_present": []}
    r = await _import(client, actors.alice_key, wallet, "ETH", [ETH.lower(), ETH_2])
    assert r.json() == {"chain": "ETH", "added": [ETH_2_CHECKSUMMED], "already_present": [ETH]}
    r = await _import(client, actors.alice_key, wallet, "BTC", [BTC_REGTEST.upper()])
    assert r.json()["added"] == [BTC_REGTEST]
    r = await _import(client, actors.alice_key, wallet, "JOBCOIN", ["alice-1"])
    assert r.json()["added"] == ["alice-1"]

    listed = (await client.get(f"/api/v1/wallets/{wallet}/addresses", headers=actors.auth(actors.alice_key))).json()
    assert [(a["chain"], a["address"], a["status"]) for a in listed["items"]] == [
        ("ETH", ETH, "pending"),
        ("ETH", ETH_5_CHECKSUMMED, "pending"),
        ("ETH", ETH_2_CHECKSUMMED, "pending"),
        ("BTC", BTC_REGTEST, "pending"),
        ("JOBCOIN", "alice-1", "pending"),
    ]
    first = listed["items"][0]
    assert (first["confirmed"], first["unconfirmed"], first["balances"], first["last_synced_at"]) == (
        "0",
        "0",
        [],
        None,
    )
    got = (await client.get(f"/api/v1/wallets/{wallet}", headers=actors.auth(actors.alice_key))).json()
    assert got["address_count"] == 5


def test_eth_lowercase_forms() -> None:
    for lower, canonical in ((ETH_3, ETH_3_CHECKSUMMED), (ETH_4, ETH_4_CHECKSUMMED), (ETH_5, ETH_5_CHECKSUMMED)):
        assert service.normalize_wallet_address("ETH", lower, bitcoin_network="regtest") == canonical


# -- transactions listing --------------------------------------------------------------------


async def _seed_250(rt: Runtime, client: httpx.AsyncClient, actors: Actors) -> tuple[int, list[str]]:
    """A wallet with two ETH addresses and 250 rows (times with ties); txids in newest-first order."""
    wallet = await _wallet(client, actors.alice_key)
    assert (await _import(client, actors.alice_key, wallet, "ETH", [ETH, ETH_5])).status_code == 200
    rng = random.Random(7)
    rows = []
    for i in range(250):
        address = ETH if i % 3 else ETH_5_CHECKSUMMED
        # 60 distinct minutes for 250 rows: many ties, broken by id.
        when = T0 + timedelta(minutes=rng.randrange(60))
        rows.append(tx(f"0x{i:064x}", address=address, when=when, height=1000 + i, amount=1000 + i))
    rng.shuffle(rows)
    assert await _upsert(rt.engine, rows) == 250
    async with rt.engine.connect() as conn:
        stored = (await conn.execute(select(address_txs.c.id, address_txs.c.txid, address_txs.c.block_time))).all()
    ordered = sorted(stored, key=lambda r: (r.block_time, r.id), reverse=True)
    return wallet, [r.txid for r in ordered]


async def test_pagination_covers_every_row_once_in_order(
    client: httpx.AsyncClient, rt: Runtime, actors: Actors
) -> None:
    wallet, expected = await _seed_250(rt, client, actors)
    items = await _pages(client, actors.alice_key, wallet, limit=100)
    assert [i["txid"] for i in items] == expected
    oldest = await _pages(client, actors.alice_key, wallet, limit=100, sort="oldest")
    assert [i["txid"] for i in oldest] == expected[::-1]
    # Page sizes and the last page's cursor.
    r = await client.get(
        f"/api/v1/wallets/{wallet}/transactions", params={"limit": 250}, headers=actors.auth(actors.alice_key)
    )
    assert len(r.json()["items"]) == 250
    assert r.json()["next_cursor"] is None
    first = r.json()["items"][0]
    assert set(first) >= {"txid", "chain", "address", "asset", "direction", "net", "fee", "block_height", "block_time"}
    assert isinstance(first["net"], str)
    assert first["inputs"][0]["amount"] == first["net"]
    default = await client.get(f"/api/v1/wallets/{wallet}/transactions", headers=actors.auth(actors.alice_key))
    assert len(default.json()["items"]) == 50


async def test_pagination_is_stable_under_inserts(client: httpx.AsyncClient, rt: Runtime, actors: Actors) -> None:
    wallet, expected = await _seed_250(rt, client, actors)
    originals = set(expected)
    headers = {"X-API-Key": actors.alice_key}
    url = f"/api/v1/wallets/{wallet}/transactions"
    seen: list[str] = []
    r = (await client.get(url, params={"limit": 100}, headers=headers)).json()
    seen.extend(i["txid"] for i in r["items"])
    cursor = r["next_cursor"]
    # New rows everywhere in the order: newer than all, inside page 1's range, inside later
    # pages' range, older than all, and unconfirmed ones.
    fresh = [
        tx(f"0xnew{i}", address=ETH, when=T0 + timedelta(minutes=m), height=5000 + i)
        for i, m in enumerate((-10, 0, 15, 30, 45, 59, 59, 120))
    ]
    fresh.append(tx("0xnewpending", address=ETH, height=None))
    await _upsert(rt.engine, fresh)
    while cursor is not None:
        r = (await client.get(url, params={"limit": 100, "cursor": cursor}, headers=headers)).json()
        seen.extend(i["txid"] for i in r["items"])
        cursor = r["next_cursor"]
        # Insert again between every page.
        await _upsert(rt.engine, [tx(f"0xlate{len(seen)}", address=ETH_5_CHECKSUMMED, when=T0 + timedelta(minutes=30))])
    assert [t for t in seen if t in originals] == expected
    assert len(seen) == len(set(seen))


async def test_filters_and_sorting(client: httpx.AsyncClient, rt: Runtime, actors: Actors) -> None:
    wallet = await _wallet(client, actors.alice_key)
    await _import(client, actors.alice_key, wallet, "ETH", [ETH])
    await _upsert(
        rt.engine,
        [
            tx("0xa", direction="in", amount=500, when=T0),
            tx("0xb", direction="out", amount=5000, fee=100, when=T0 + timedelta(hours=1)),
            tx("0xc", direction="self", amount=70, fee=30, when=T0 + timedelta(hours=2)),
            tx("0xd", direction="in", amount=10**30, when=T0 + timedelta(hours=3)),
            # Another address, not in the wallet: never listed.
            tx("0xz", address=ETH_2_CHECKSUMMED, when=T0),
        ],
    )
    key = actors.alice_key

    async def txids(**params: Any) -> list[str]:
        return [i["txid"] for i in await _pages(client, key, wallet, limit=2, **params)]

    assert await txids() == ["0xd", "0xc", "0xb", "0xa"]
    assert await txids(sort="oldest") == ["0xa", "0xb", "0xc", "0xd"]
    assert await txids(direction="in") == ["0xd", "0xa"]
    assert await txids(direction="out") == ["0xb"]
    assert await txids(direction="self") == ["0xc"]
    assert await txids(since=(T0 + timedelta(hours=1)).isoformat(), until=(T0 + timedelta(hours=3)).isoformat()) == [
        "0xc",
        "0xb",
    ]
    assert await txids(since="2025-01-01T01:00:00") == ["0xd", "0xc", "0xb"]  # naive = UTC
    # abs(net): a=500, b=5100, c=30, d=10**30
    assert await txids(min_amount="500", max_amount="5100") == ["0xb", "0xa"]
    assert await txids(min_amount=str(10**30)) == ["0xd"]
    assert await txids(max_amount="29") == []
    rows = {i["txid"]: i for i in await _pages(client, key, wallet)}
    assert rows["0xb"]["net"] == "-5100"
    assert rows["0xb"]["fee"] == "100"
    assert rows["0xd"]["net"] == str(10**30)

    url = f"/api/v1/wallets/{wallet}/transactions"
    h = {"X-API-Key": key}
    for bad in ({"cursor": "garbage!!"}, {"cursor": "eyJ4IjoxfQ"}, {"limit": 0}, {"limit": 501}, {"min_amount": "-1"}):
        assert_problem(await client.get(url, params=bad, headers=h), 422)
    assert_problem(await client.get(url, params={"direction": "sideways"}, headers=h), 422)
    cursor = (await client.get(url, params={"limit": 1}, headers=h)).json()["next_cursor"]
    body = assert_problem(await client.get(url, params={"cursor": cursor, "sort": "oldest"}, headers=h), 422)
    assert "sort" in body["detail"]


async def test_confirmations_from_sync_height(client: httpx.AsyncClient, rt: Runtime, actors: Actors) -> None:
    wallet = await _wallet(client, actors.alice_key)
    await _import(client, actors.alice_key, wallet, "ETH", [ETH])
    await _upsert(rt.engine, [tx("0xa", height=100), tx("0xb", height=None)])
    rows = {i["txid"]: i for i in await _pages(client, actors.alice_key, wallet)}
    assert rows["0xa"]["confirmations"] is None
    assert rows["0xb"]["confirmations"] == 0
    async with rt.engine.begin() as conn:
        await conn.execute(wallet_addresses.update().values(synced_height=105, status="synced"))
    rows = {i["txid"]: i for i in await _pages(client, actors.alice_key, wallet)}
    assert rows["0xa"]["confirmations"] == 6


# -- the store: merge, reorg, balances -------------------------------------------------------


async def test_a_transaction_touching_many_addresses_stores_its_legs_once(engine: AsyncEngine) -> None:
    payees = [f"bcrt1qpayee{n:04d}" for n in range(50)]
    outputs = tuple(Leg(n, address, 1000 + n, "BTC") for n, address in enumerate(payees))
    inputs = (Leg(0, "bcrt1qpayer", 200_000, "BTC"),)
    rows = [
        AddressTx("BTC", address, "ee" * 32, inputs, outputs, 1000 + n, "BTC", 500, 9, "09", T0)
        for n, address in enumerate(payees)
    ]
    assert await _upsert(engine, rows) == 50
    async with engine.connect() as conn:
        stored = (await conn.execute(select(chain_txs))).all()
        assert len(stored) == 1
        assert len(stored[0].outputs) == 50
        row = await store.get_address_tx(conn, "BTC", payees[7], "ee" * 32)
    assert row is not None
    assert (row.net, row.fee, row.direction, len(row.outputs)) == (1007, 500, Direction.IN, 50)
    assert await _upsert(engine, rows) == 0


async def test_eth_and_token_legs_of_one_transaction_do_not_collide(engine: AsyncEngine) -> None:
    token = "0xdAC17F958D2ee523a2206206994597C13D831ec7"
    eth_row = AddressTx(
        "ETH", ETH, "0x" + "ab" * 32, (Leg(0, ETH, 0, "ETH"),), (Leg(0, token, 0, "ETH"),), -21_000, "ETH", 21_000,
        5, "0x05", T0,
    )  # fmt: skip
    token_row = AddressTx(
        "ETH", ETH, "0x" + "ab" * 32, (Leg(0, ETH, 9, token),), (Leg(0, "0x" + "11" * 20, 9, token),), -9, token,
        None, 5, "0x05", T0,
    )  # fmt: skip
    assert await _upsert(engine, [eth_row, token_row]) == 2
    async with engine.connect() as conn:
        eth = await store.get_address_tx(conn, "ETH", ETH, "0x" + "ab" * 32, "ETH")
        usdt = await store.get_address_tx(conn, "ETH", ETH, "0x" + "ab" * 32, token)
    assert eth is not None
    assert usdt is not None
    # Both legs at index 0 survive (keyed by asset too); the token row knows the fee the ETH row brought.
    assert {(leg.asset, leg.amount) for leg in usdt.inputs} == {("ETH", 0), (token, 9)}
    assert (eth.net, usdt.net, usdt.fee) == (-21_000, -9, 21_000)
    # Direction counts the legs of the row's own asset only.
    assert (eth.direction, usdt.direction) == (Direction.OUT, Direction.OUT)


async def test_merge_of_partial_copies_keeps_legs(engine: AsyncEngine) -> None:
    full = AddressTx(
        chain="BTC",
        address=BTC_REGTEST,
        txid="ab" * 32,
        inputs=(Leg(0, BTC_REGTEST, 7000, "BTC"), Leg(1, "bcrt1other", 3000, "BTC")),
        outputs=(Leg(0, "bcrt1payee", 6000, "BTC"), Leg(1, BTC_REGTEST, 3500, "BTC"), Leg(2, None, 0, "BTC")),
        net=-3500,
        asset="BTC",
        fee=500,
        block_height=None,
        block_hash=None,
        block_time=None,
    )
    partial = AddressTx(
        chain="BTC",
        address=BTC_REGTEST,
        txid="ab" * 32,
        inputs=(Leg(0, BTC_REGTEST, 7000, "BTC"),),
        outputs=(Leg(1, BTC_REGTEST, 3500, "BTC"),),
        net=-3500,
        asset="BTC",
        fee=None,
        block_height=None,
        block_hash=None,
        block_time=None,
    )
    # Partial first, then the full copy: union.
    assert await _upsert(engine, [partial]) == 1
    assert await _upsert(engine, [full]) == 1
    row = await _stored(engine, "ab" * 32, BTC_REGTEST)
    assert len(row["inputs"]) == 2
    assert len(row["outputs"]) == 3
    assert row["fee"] == 500
    assert row["direction"] == "out"
    assert row["net"] == -3500
    # A partial copy later never drops legs nor the known fee; it confirms the transaction.
    confirmed = AddressTx(**{**_fields(partial), "block_height": 812, "block_hash": "00ff", "block_time": T0})
    assert await _upsert(engine, [confirmed]) == 1
    row = await _stored(engine, "ab" * 32, BTC_REGTEST)
    assert [leg["index"] for leg in row["inputs"]] == [0, 1]
    assert [leg["address"] for leg in row["outputs"]] == ["bcrt1payee", BTC_REGTEST, None]
    assert row["outputs"][0]["amount"] == "6000"
    assert (row["block_height"], row["block_hash"], row["block_time"], row["fee"]) == (812, "00ff", T0, 500)
    # Storing the same again changes nothing; an unconfirmed copy does not un-confirm.
    assert await _upsert(engine, [confirmed, partial, full]) == 0
    assert (await _stored(engine, "ab" * 32, BTC_REGTEST))["block_height"] == 812
    # Moved to another block by a reorg: the new block wins.
    moved = AddressTx(**{**_fields(partial), "block_height": 813, "block_hash": "00ee", "block_time": T0})
    assert await _upsert(engine, [moved]) == 1
    assert (await _stored(engine, "ab" * 32, BTC_REGTEST))["block_hash"] == "00ee"
    # Duplicates within one batch are merged too.
    other = AddressTx(**{**_fields(partial), "txid": "cd" * 32})
    other_full = AddressTx(**{**_fields(full), "txid": "cd" * 32})
    assert await _upsert(engine, [other, other_full]) == 1
    assert len((await _stored(engine, "cd" * 32, BTC_REGTEST))["outputs"]) == 3


def _fields(row: AddressTx) -> dict[str, Any]:
    return {name: getattr(row, name) for name in AddressTx.__dataclass_fields__}


async def test_reorg_and_balances(engine: AsyncEngine) -> None:
    token = "0x6B175474E89094C44Da98b954EedeAC495271d0F"
    await _upsert(
        engine,
        [
            tx("0x1", amount=1000, height=100),
            tx("0x2", direction="out", amount=300, fee=21, height=101),
            tx("0x3", amount=50, height=102),
            tx("0x4", amount=7, height=None),
            tx("0x5", amount=10**20, height=102, asset=token, fee=None),
            tx("0x6", address=ETH_2_CHECKSUMMED, amount=1, height=103),
            tx("0x7", chain="BTC", asset="BTC", address=BTC_REGTEST, amount=1, height=103),
        ],
    )
    async with engine.begin() as conn:
        balances = await store.recompute_balance(conn, "ETH", ETH)
    assert balances == {"ETH": (1000 - 321 + 50, 7), token: (10**20, 0)}

    async with engine.begin() as conn:
        touched = await store.mark_unconfirmed_above(conn, "ETH", 101)
    assert touched == sorted([ETH, ETH_2_CHECKSUMMED])
    for txid in ("0x3", "0x5"):
        row = await _stored(engine, txid)
        assert (row["block_height"], row["block_hash"], row["block_time"]) == (None, None, None)
    assert (await _stored(engine, "0x2"))["block_height"] == 101
    assert (await _stored(engine, "0x7", BTC_REGTEST))["block_height"] == 103  # other chain untouched

    async with engine.begin() as conn:
        balances = await store.recompute_balance(conn, "ETH", ETH)
    assert balances == {"ETH": (1000 - 321, 57), token: (0, 10**20)}
    async with engine.connect() as conn:
        stored = {
            r.asset: (r.confirmed, r.unconfirmed)
            for r in (await conn.execute(select(address_balances).where(address_balances.c.address == ETH))).all()
        }
    assert stored == balances
    # Re-confirmed in the new chain.
    await _upsert(engine, [tx("0x3", amount=50, height=102)])
    async with engine.begin() as conn:
        assert (await store.recompute_balance(conn, "ETH", ETH))["ETH"] == (1000 - 321 + 50, 7)


async def test_balances_in_the_api(client: httpx.AsyncClient, rt: Runtime, actors: Actors) -> None:
    wallet = await _wallet(client, actors.alice_key)
    await _import(client, actors.alice_key, wallet, "ETH", [ETH])
    token = "0x6B175474E89094C44Da98b954EedeAC495271d0F"
    await _upsert(
        rt.engine,
        [
            tx("0x1", amount=1000),
            tx("0x2", direction="out", amount=2000, fee=21, height=None),
            tx("0x3", amount=5, asset=token, fee=None),
        ],
    )
    async with rt.engine.begin() as conn:
        await store.recompute_balance(conn, "ETH", ETH)
    item = (await client.get(f"/api/v1/wallets/{wallet}/addresses", headers={"X-API-Key": actors.alice_key})).json()[
        "items"
    ][0]
    assert (item["confirmed"], item["unconfirmed"]) == ("1000", "-2021")
    assert item["balances"] == [
        # An unconfigured token: its contract, with no symbol or decimals to claim.
        {"asset": token, "symbol": None, "decimals": None, "confirmed": "5", "unconfirmed": "0"},
        {"asset": "ETH", "symbol": "ETH", "decimals": 18, "confirmed": "1000", "unconfirmed": "-2021"},
    ]


# -- CLI -------------------------------------------------------------------------------------


def test_cli_users_and_keys(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio  # noqa: PLC0415

    monkeypatch.setenv("MIXHOUSE_DATABASE_URL", database_url)
    runner = CliRunner()
    made = runner.invoke(cli_app, ["users", "create", "carol", "--admin"])
    assert made.exit_code == 0, made.output
    assert "carol" in made.output
    again = runner.invoke(cli_app, ["users", "create", "carol"])
    assert again.exit_code == 2
    issued = runner.invoke(cli_app, ["apikey", "create", "carol", "--label", "ci"])
    assert issued.exit_code == 0, issued.output
    key = issued.stdout.strip().splitlines()[-1]
    assert key.startswith("mh_")
    assert runner.invoke(cli_app, ["apikey", "create", "nobody"]).exit_code == 2

    async def check() -> service.User | None:
        eng = create_async_engine(sqlalchemy_url(database_url), poolclass=NullPool)
        try:
            return await service.authenticate(eng, key)
        finally:
            await eng.dispose()

    user = asyncio.run(check())
    assert user is not None
    assert (user.name, user.is_admin) == ("carol", True)


# -- schemathesis over the wallet routes -----------------------------------------------------
#
# The schema is loaded at import from an app whose runtime the fixture replaces with one on
# the test's database (schemathesis' lazy ``from_fixture`` loader does not run on pytest 9).
# Schemathesis calls the app from its own event-loop thread, so the engine has no pool: no
# connection outlives the loop that opened it.

FUZZ_KEY = "mh_fuzz-key-for-schemathesis-0123456789abcdef"
# m/84'/1'/0' of the BIP-39 test mnemonic "abandon ... about" (a test-network account key).
FUZZ_VPUB = (
    "vpub5Y6cjg78GGuNLsaPhmYsiw4gYX3HoQiRBiSwDaBXKUafCt9bNwWQiitDk5VZ5BVxYnQdwoTyXSs2JHRPAgjAvtbBrf8ZhDYe2jWAqvZVnsc"
)
_FUZZ_APP = create_app(
    Runtime(
        settings=_settings("postgresql://unused@127.0.0.1/unused"),
        engine=create_async_engine(sqlalchemy_url("postgresql://unused@127.0.0.1/unused"), poolclass=NullPool),
        adapters={},
        screener=Screener([]),
    )
)
fuzz_schema = schemathesis.openapi.from_asgi("/openapi.json", _FUZZ_APP).include(path_regex="^/api/v1/wallets")


@pytest.fixture
def fuzz_db(database_url: str) -> Iterator[None]:
    """Seed a user with FUZZ_KEY, a wallet with an address and history; point the app at it."""
    import asyncio  # noqa: PLC0415

    async def seed() -> None:
        engine = create_async_engine(sqlalchemy_url(database_url), poolclass=NullPool)
        try:
            actors = await _make_actors(engine)
            async with engine.begin() as conn:
                row = {"user_id": actors.alice.id, "key_hash": service.hash_key(FUZZ_KEY)}
                await conn.execute(api_keys.insert().values(**row))
            wallet = await service.create_wallet(engine, actors.alice.id, "fuzz")
            await service.import_addresses(engine, wallet["id"], "ETH", [ETH], bitcoin_network="regtest")
            # A watch-only key set too, so the xpub routes list something.
            await service.import_xpub(engine, wallet["id"], FUZZ_VPUB, gap_limit=2, bitcoin_network="regtest")
            await _upsert(engine, [tx(f"0x{i:x}", when=T0 + timedelta(minutes=i)) for i in range(5)])
        finally:
            await engine.dispose()

    asyncio.run(seed())
    previous = _FUZZ_APP.state.runtime
    _FUZZ_APP.state.runtime = Runtime(
        settings=_settings(database_url),
        engine=create_async_engine(sqlalchemy_url(database_url), poolclass=NullPool),
        adapters={},
        screener=Screener([]),
    )
    yield
    _FUZZ_APP.state.runtime = previous


@fuzz_schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_wallet_api_never_answers_5xx(case: Any, fuzz_db: None) -> None:
    response = case.call(headers={"Authorization": f"Bearer {FUZZ_KEY}"})
    assert response.status_code < 500, response.text
    case.validate_response(response, checks=[not_a_server_error])
