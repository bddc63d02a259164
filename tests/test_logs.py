"""Logging (issue 14, item 3): plain tracebacks without locals, no key, mnemonic or mix id in
any log line, the traceback kept in production JSON, and a redacted uvicorn access log."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import time
from collections.abc import AsyncIterator, Iterator
from typing import Literal

import httpx
import psycopg
import pytest
import structlog
from pydantic import SecretStr

from mixhouse.api.app import create_app
from mixhouse.app.build import build_runtime
from mixhouse.config import Settings
from mixhouse.logs import (
    RedactingFilter,
    configure_logging,
    mix_fingerprint,
    redact_target,
    scrub,
    uvicorn_log_config,
)
from mixhouse.mixer.runtime import Runtime

ADMIN_KEY = "admin-key-that-must-never-be-logged"
USER_KEY = "mh_user-key-that-must-never-be-logged-0123456789"
MIX_ID = "Zk3v9QwErTyUiOp0AsDfGhJkLzXcVbNm"  # the shape of secrets.token_urlsafe(24)
MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def _fail_with_secrets_in_locals() -> None:
    api_key = ADMIN_KEY  # noqa: F841 - a local the old renderer printed
    headers = {"x-api-key": ADMIN_KEY, "authorization": f"Bearer {USER_KEY}"}  # noqa: F841
    mnemonic = MNEMONIC  # noqa: F841
    huge = list(range(200_000))  # noqa: F841 - drawing this with rich stalled the event loop
    raise RuntimeError("boom")


def _log_failure(
    environment: Literal["development", "production"], capsys: pytest.CaptureFixture[str]
) -> tuple[str, float]:
    # model_construct: production's secret checks do not matter to logging.
    configure_logging(Settings.model_construct(environment=environment))
    log = structlog.get_logger("test")
    started = time.perf_counter()
    try:
        _fail_with_secrets_in_locals()
    except RuntimeError:
        log.exception(
            "unhandled exception",
            path=f"/api/v1/mixes/{MIX_ID}",
            mix_id=MIX_ID,
            mnemonic=MNEMONIC,
            x_api_key=ADMIN_KEY,
            note=f"Bearer {USER_KEY}",
        )
    elapsed = time.perf_counter() - started
    return capsys.readouterr().out, elapsed


def _assert_clean(text: str) -> None:
    for secret in (ADMIN_KEY, USER_KEY, MIX_ID, MNEMONIC, "abandon abandon"):
        assert secret not in text, secret


@pytest.mark.parametrize("environment", ["development", "production"])
def test_a_traceback_is_plain_text_without_locals_or_secrets(
    environment: Literal["development", "production"], capsys: pytest.CaptureFixture[str]
) -> None:
    out, elapsed = _log_failure(environment, capsys)
    _assert_clean(out)
    assert "Traceback (most recent call last)" in out
    assert "RuntimeError: boom" in out
    assert "_fail_with_secrets_in_locals" in out
    # No locals: neither the names nor the 200,000-item list.
    assert "199999" not in out
    assert len(out) < 10_000
    assert elapsed < 1.0
    assert mix_fingerprint(MIX_ID) in out
    assert "/api/v1/mixes/{mix_id}" in out
    if environment == "production":
        [line] = out.strip().splitlines()
        event = json.loads(line)
        assert event["event"] == "unhandled exception"
        assert event["exception"].startswith("Traceback (most recent call last)")
        assert event["mnemonic"] == "***"
        assert event["x_api_key"] == "***"


def test_scrub_and_redact_target() -> None:
    assert scrub(f"key {USER_KEY} used") == "key mh_*** used"
    assert scrub(f"GET /api/v1/mixes/{MIX_ID}?x=1") == "GET /api/v1/mixes/{mix_id}?x=1"
    sql_error = "(psycopg.errors.UndefinedTable) relation\n[SQL: SELECT 1]\n[parameters: {'id_1': 'secret'}]\n(more)"
    assert "secret" not in scrub(sql_error)
    assert "[SQL: SELECT 1]" in scrub(sql_error)
    assert redact_target(f"/api/v1/mixes/{MIX_ID}") == "/api/v1/mixes/{mix_id}"
    assert redact_target(f"/api/v1/admin/audit?entity_type=mix&entity_id={MIX_ID}&limit=5") == (
        "/api/v1/admin/audit?entity_type=mix&entity_id=...&limit=5"
    )
    assert redact_target("/api/v1/admin/mixes?after=b3BhcXVl") == "/api/v1/admin/mixes?after=..."
    assert mix_fingerprint(MIX_ID) == mix_fingerprint(MIX_ID) != mix_fingerprint(MIX_ID + "x")


def test_uvicorn_access_log_hides_mix_ids() -> None:
    config = uvicorn_log_config()
    stream = io.StringIO()
    logging.config.dictConfig(config)
    access = logging.getLogger("uvicorn.access")
    error = logging.getLogger("uvicorn.error")
    handlers = {name: logging.getLogger(name).handlers for name in ("uvicorn.access", "uvicorn")}
    try:
        for handler in handlers["uvicorn.access"] + handlers["uvicorn"]:
            assert any(isinstance(f, RedactingFilter) for f in handler.filters)
            assert isinstance(handler, logging.StreamHandler)
            handler.setStream(stream)
        # The record uvicorn's h11/httptools protocols write for every request.
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", f"/api/v1/mixes/{MIX_ID}", "1.1", 200)
        try:
            raise ValueError(f"lookup of /api/v1/mixes/{MIX_ID} failed\n[parameters: {{'id': '{MIX_ID}'}}]")
        except ValueError:
            error.exception("Exception in ASGI application, key %s", USER_KEY)
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    text = stream.getvalue()
    assert '"GET /api/v1/mixes/{mix_id} HTTP/1.1" 200' in text
    assert "Traceback" in text
    _assert_clean(text)


# -- end to end: a 500 of the API, logged in development mode ------------------------------------


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    settings = Settings(jobcoin_enabled=True, database_url=database_url, admin_api_key=SecretStr(ADMIN_KEY))
    runtime = build_runtime(settings, database_url, pool_size=2)
    yield runtime
    await runtime.aclose()
    await runtime.engine.dispose()


async def test_a_500_logs_no_key_and_no_mix_id(
    rt: Runtime, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(rt.settings)
    transport = httpx.ASGITransport(app=create_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        created = await http.post("/api/v1/mixes", json={"asset": "JOBCOIN", "withdrawal_addresses": ["alice-1"]})
        assert created.status_code == 201, created.text
        mix_id = created.json()["id"]
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DROP TABLE sends CASCADE")
        capsys.readouterr()
        started = time.perf_counter()
        response = await http.get(
            f"/api/v1/mixes/{mix_id}", headers={"X-API-Key": ADMIN_KEY, "Authorization": f"Bearer {USER_KEY}"}
        )
        elapsed = time.perf_counter() - started
    assert response.status_code == 500
    out = capsys.readouterr().out
    assert "Traceback (most recent call last)" in out
    assert response.json()["error_id"] in out
    assert mix_id not in out
    _assert_clean(out)
    assert elapsed < 2.0
