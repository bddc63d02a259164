"""The migrations against ``mixhouse.db.tables``: the migrated schema is the declared one, and the
latest revision downgrades and upgrades again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Engine

from mixhouse.db.engine import sqlalchemy_url
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
