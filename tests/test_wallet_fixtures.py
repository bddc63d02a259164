"""Development fixtures: realistic rows, idempotent, balances consistent with history."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.chains.bitcoin.networks import normalize_address
from mixhouse.db.tables import address_balances, address_txs, api_keys, chain_txs, users, wallet_addresses, wallets
from mixhouse.wallets import store
from mixhouse.wallets.fixtures import btc_history, eth_history, generate_fixtures
from mixhouse.wallets.records import Direction

TABLES = (users, api_keys, wallets, wallet_addresses, chain_txs, address_txs, address_balances)


async def _snapshot(engine: AsyncEngine) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    async with engine.connect() as conn:
        for table in TABLES:
            order = list(table.primary_key.columns)
            out[table.name] = [dict(r._mapping) for r in (await conn.execute(select(table).order_by(*order))).all()]
    return out


async def test_generate_is_idempotent_and_consistent(engine: AsyncEngine) -> None:
    summary = await generate_fixtures(engine, users=2, wallets_per_user=2, addresses_per_wallet=3, txs_per_address=20)
    assert (summary.users, summary.wallets, summary.addresses, summary.transactions) == (2, 4, 12, 240)
    assert (summary.created_users, summary.created_wallets, summary.added_addresses, summary.written) == (
        2,
        4,
        12,
        240,
    )
    first = await _snapshot(engine)
    counts = {name: len(rows) for name, rows in first.items()}
    # Each transaction's legs once, however many of the fixture addresses it touches.
    assert counts.pop("chain_txs") == len({(t["chain"], t["txid"]) for t in first["address_txs"]})
    assert counts == {
        "users": 2,
        "api_keys": 0,
        "wallets": 4,
        "wallet_addresses": 12,
        "address_txs": 240,
        "address_balances": 12,
    }
    assert [u["name"] for u in first["users"]] == ["demo-user-1", "demo-user-2"]
    assert all(a["status"] == "synced" and a["synced_height"] is not None for a in first["wallet_addresses"])
    chains = [a["chain"] for a in first["wallet_addresses"]]
    assert chains.count("BTC") == 8
    assert chains.count("ETH") == 4
    for a in first["wallet_addresses"]:
        if a["chain"] == "BTC":
            assert a["address"].startswith("bcrt1q")
            assert normalize_address(a["address"], "regtest") == a["address"]
        else:
            assert a["address"].startswith("0x")
            assert len(a["address"]) == 42
    assert len({(a["chain"], a["address"]) for a in first["wallet_addresses"]}) == 12
    directions = {t["direction"] for t in first["address_txs"]}
    assert {Direction.IN.value, Direction.OUT.value} <= directions
    assert all(t["fee"] is not None and t["fee"] > 0 for t in first["chain_txs"])

    # Balances: per address, confirmed = sum of confirmed net, unconfirmed = the rest, never negative.
    nets: dict[tuple[str, str], list[int]] = {}
    for t in first["address_txs"]:
        pair = nets.setdefault((t["chain"], t["address"]), [0, 0])
        pair[0 if t["block_height"] is not None else 1] += int(t["net"])
    for b in first["address_balances"]:
        assert [int(b["confirmed"]), int(b["unconfirmed"])] == nets[(b["chain"], b["address"])]
        assert int(b["confirmed"]) + int(b["unconfirmed"]) >= 0
    async with engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(address_txs))).scalar_one()
        page, cursor = await store.list_txs(conn, int(first["wallets"][0]["id"]), limit=10)
    assert total == 240
    assert len(page) == 10
    assert cursor is not None

    again = await generate_fixtures(engine, users=2, wallets_per_user=2, addresses_per_wallet=3, txs_per_address=20)
    assert (again.created_users, again.created_wallets, again.added_addresses, again.written) == (0, 0, 0, 0)
    assert again.transactions == 240
    assert await _snapshot(engine) == first


async def test_history_is_deterministic_per_seed(engine: AsyncEngine) -> None:
    await generate_fixtures(engine, users=1, wallets_per_user=1, addresses_per_wallet=2, txs_per_address=5, seed=7)
    async with engine.connect() as conn:
        txids = sorted((await conn.execute(select(address_txs.c.txid))).scalars())
    async with engine.connect() as conn:
        found = (await conn.execute(select(wallet_addresses.c.chain, wallet_addresses.c.address))).all()
    addrs = {str(chain): str(address) for chain, address in found}
    expected = [t.txid for t in btc_history(addrs["BTC"], 5, 7)] + [t.txid for t in eth_history(addrs["ETH"], 5, 7)]
    assert txids == sorted(expected)
    assert btc_history(addrs["BTC"], 5, 8)[0].txid not in txids
