"""The API with Bitcoin enabled: BTC mixes, network checks, the UTXO pool in /admin/pool."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from sqlalchemy import func, select

from mixhouse.api.app import create_app
from mixhouse.app.build import build_runtime
from mixhouse.config import DEV_ADMIN_KEY, Settings
from mixhouse.db.tables import key_counters, mixes
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.mixer.runtime import Runtime

# Creating a mix needs no node: deposit addresses are derived locally (BIP-84).
MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


@pytest_asyncio.fixture
async def btc_client(database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    settings = Settings(
        database_url=database_url,
        jobcoin_enabled=False,
        bitcoin_enabled=True,
        bitcoin_network="regtest",
        bitcoin_mnemonic=MNEMONIC,
    )
    rt = build_runtime(settings, database_url)
    transport = httpx.ASGITransport(app=create_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client, rt
    await rt.aclose()
    await rt.engine.dispose()


def _with_bad_checksum(address: str) -> str:
    return address[:-1] + ("q" if address[-1] != "q" else "p")


async def _mix_count(rt: Runtime) -> int:
    async with rt.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(mixes))).scalar_one())


async def test_a_btc_mix_gets_a_bip84_deposit_address(btc_client: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, rt = btc_client
    user = Bip84Keyring(MNEMONIC, "regtest", passphrase="a user").address(0, 0)
    response = await client.post("/api/v1/mixes", json={"asset": "BTC", "withdrawal_addresses": [user]})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["deposit_address"].startswith("bcrt1q")
    assert body["deposit_address"] == rt.adapter("BTC").deposit_address(0)
    assert body["min_deposit"] == "100000"  # satoshi, as a string


async def test_addresses_of_another_network_are_refused(btc_client: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, rt = btc_client
    for address in (
        "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu",  # mainnet
        "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",  # mainnet P2PKH
        _with_bad_checksum(Bip84Keyring(MNEMONIC, "regtest").address(0, 0)),
        "0x52908400098527886E0F7030069857D2E4169EE7",  # Ethereum
    ):
        response = await client.post("/api/v1/mixes", json={"asset": "BTC", "withdrawal_addresses": [address]})
        assert response.status_code == 422, (address, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    assert await _mix_count(rt) == 0


async def test_admin_pool_shows_the_utxo_pool(btc_client: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, rt = btc_client
    response = await client.get("/api/v1/admin/pool", headers={"X-API-Key": DEV_ADMIN_KEY})
    assert response.status_code == 200
    [pool] = response.json()["pools"]
    assert pool["asset"] == "BTC"
    assert pool["pool_address"] == rt.adapter("BTC").pool_address
    assert pool["books"] == "0"


async def test_past_the_last_soft_index_mix_creation_answers_503(btc_client: tuple[httpx.AsyncClient, Runtime]) -> None:
    """Issue 14 item 2: an HD index past 2^31 - 1 answered 500; now a 503 problem, nothing made."""
    client, rt = btc_client
    async with rt.engine.begin() as conn:
        await conn.execute(key_counters.insert().values(asset="BTC", next_index=2**31))
    user = Bip84Keyring(MNEMONIC, "regtest", passphrase="a user").address(0, 0)
    response = await client.post("/api/v1/mixes", json={"asset": "BTC", "withdrawal_addresses": [user]})
    assert response.status_code == 503, response.text
    assert response.json()["type"] == "urn:mixhouse:problem:keys-exhausted"
    assert await _mix_count(rt) == 0
    async with rt.engine.connect() as conn:
        left = (await conn.execute(select(key_counters.c.next_index).where(key_counters.c.asset == "BTC"))).scalar_one()
    assert left == 2**31, "the refused creation took no index"
