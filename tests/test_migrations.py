"""The migrations against ``mixhouse.db.tables``: the migrated schema is the declared one, the
revisions downgrade and upgrade again, and revisions that move data keep it (run on a real
database holding rows of the previous schema)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Engine

from mixhouse.db.engine import sqlalchemy_url, with_database
from mixhouse.db.migrate import alembic_config, upgrade
from mixhouse.db.tables import metadata


@pytest.fixture
def sync_engine(database_url: str) -> Iterator[Engine]:
    """A synchronous engine (what Alembic runs on) on this test's migrated database."""
    engine = create_engine(sqlalchemy_url(database_url))
    yield engine
    engine.dispose()


def _differences(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    # procrastinate's job tables are created by procrastinate's own schema, not declared here.
    return [d for d in diff if "procrastinate" not in repr(d)]


def test_migrated_schema_matches_tables(sync_engine: Engine) -> None:
    assert _differences(sync_engine) == []


def test_wallet_xpubs_revision_downgrades_and_upgrades(database_url: str, sync_engine: Engine) -> None:
    command.downgrade(alembic_config(database_url), "0003")
    schema = inspect(sync_engine)
    assert "wallet_xpubs" not in schema.get_table_names()
    assert "xpub_id" not in {c["name"] for c in schema.get_columns("wallet_addresses")}
    upgrade(database_url)
    assert _differences(sync_engine) == []


@pytest.fixture
def empty_database(pg_server_url: str) -> Iterator[str]:
    """A libpq URI to a new database with no schema at all."""
    name = f"mh_m_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _leg(index: int, address: str | None, amount: int, asset: str = "BTC") -> dict[str, Any]:
    return {"index": index, "address": address, "amount": str(amount), "asset": asset}


def test_0005_moves_legs_to_chain_txs_merging_partial_copies(empty_database: str) -> None:
    upgrade(empty_database, "0003")
    a, b = "bcrt1qaddressa", "bcrt1qaddressb"
    old_rows = [
        # Two partial copies of one transaction (each source copy knew only its own legs).
        ("BTC", a, "aa" * 32, "BTC", "out", -700, 200, [_leg(0, a, 1000)], [_leg(1, "x", 100)]),
        ("BTC", b, "aa" * 32, "BTC", "in", 700, None, [], [_leg(0, b, 700), _leg(1, "x", 100)]),
        # An ERC-20 and an ETH row of one transaction: legs of both assets share index 0.
        ("ETH", "0xA", "0x01", "ETH", "out", -50, 50, [_leg(0, "0xA", 0, "ETH")], [_leg(0, "0xT", 0, "ETH")]),
        ("ETH", "0xA", "0x01", "0xT", "out", -9, None, [_leg(0, "0xA", 9, "0xT")], [_leg(0, "0xB", 9, "0xT")]),
    ]
    with psycopg.connect(empty_database, autocommit=True) as conn:
        for chain, address, txid, asset, direction, net, fee, inputs, outputs in old_rows:
            conn.execute(
                "INSERT INTO address_txs (chain, address, txid, asset, direction, net, fee, block_height,"
                " inputs, outputs) VALUES (%s, %s, %s, %s, %s, %s, %s, 7, %s, %s)",
                (chain, address, txid, asset, direction, net, fee, json.dumps(inputs), json.dumps(outputs)),
            )
    upgrade(empty_database)
    with psycopg.connect(empty_database) as conn:
        chain_txs = {
            (r[0], r[1]): (r[2], r[3], r[4])
            for r in conn.execute("SELECT chain, txid, fee, inputs, outputs FROM chain_txs").fetchall()
        }
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'address_txs'"
            ).fetchall()
        }
        assert conn.execute("SELECT count(*) FROM address_txs").fetchone() == (4,)
    assert set(chain_txs) == {("BTC", "aa" * 32), ("ETH", "0x01")}
    fee, inputs, outputs = chain_txs[("BTC", "aa" * 32)]
    assert fee == 200
    assert inputs == [_leg(0, a, 1000)]
    assert outputs == [_leg(0, b, 700), _leg(1, "x", 100)]
    fee, inputs, outputs = chain_txs[("ETH", "0x01")]
    assert fee == 50
    assert inputs == [_leg(0, "0xA", 9, "0xT"), _leg(0, "0xA", 0, "ETH")]  # index, address, then asset
    assert outputs == [_leg(0, "0xB", 9, "0xT"), _leg(0, "0xT", 0, "ETH")]
    assert {"fee", "inputs", "outputs"}.isdisjoint(columns)

    # And back: every row gets its transaction's legs again.
    command.downgrade(alembic_config(empty_database), "0003")
    with psycopg.connect(empty_database) as conn:
        rows = conn.execute("SELECT address, fee, outputs FROM address_txs WHERE chain = 'BTC' ORDER BY id").fetchall()
        assert conn.execute("SELECT to_regclass('chain_txs')").fetchone() == (None,)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (a, 200, [_leg(0, b, 700), _leg(1, "x", 100)]),
        (b, 200, [_leg(0, b, 700), _leg(1, "x", 100)]),
    ]
