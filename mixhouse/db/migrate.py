"""Apply the Alembic migrations programmatically (every process does on start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from mixhouse.db.engine import sqlalchemy_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at our migrations and at ``database_url`` (libpq URI)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a '%' in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database to ``revision``. Safe to run concurrently: the migration env takes
    an advisory lock, so two processes starting at once do not both create the schema."""
    command.upgrade(alembic_config(database_url), revision)
