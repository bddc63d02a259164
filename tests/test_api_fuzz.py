"""schemathesis over the mix, admin and health routes of the API (the wallet routes are
fuzzed in tests/test_wallets_api.py): no 5xx, whatever the input.

As there, the schema is loaded at import from an app whose runtime the fixture replaces with
one on the test's database, with an engine without a pool (schemathesis calls the app from its
own event loop, and no connection may outlive the loop that opened it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from mixhouse.api.app import create_app
from mixhouse.app.build import build_adapters
from mixhouse.config import Settings
from mixhouse.db.engine import sqlalchemy_url
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.screening import Screener

ADMIN_KEY = "fuzz-admin-key-0123456789"
_UNUSED = "postgresql://unused@127.0.0.1/unused"


def _runtime(database_url: str) -> Runtime:
    settings_ = Settings(jobcoin_enabled=True, database_url=database_url, admin_api_key=SecretStr(ADMIN_KEY))
    return Runtime(
        settings=settings_,
        engine=create_async_engine(sqlalchemy_url(database_url), poolclass=NullPool),
        adapters=build_adapters(settings_),
        screener=Screener([]),
    )


_FUZZ_APP = create_app(_runtime(_UNUSED))
api_schema = schemathesis.openapi.from_asgi("/openapi.json", _FUZZ_APP).include(
    path_regex="^/api/v1/(mixes|admin|health)"
)


@pytest.fixture
def fuzz_db(database_url: str) -> Iterator[None]:
    """Point the app at this test's database, with two mixes to find."""
    runtime = _runtime(database_url)
    previous = _FUZZ_APP.state.runtime
    _FUZZ_APP.state.runtime = runtime

    async def seed() -> None:
        transport = httpx.ASGITransport(app=_FUZZ_APP)
        async with httpx.AsyncClient(transport=transport, base_url="http://seed") as http:
            for addresses in (["alice-1"], ["bob-1", "bob-2"]):
                response = await http.post(
                    "/api/v1/mixes", json={"asset": "JOBCOIN", "withdrawal_addresses": addresses}
                )
                assert response.status_code == 201, response.text

    asyncio.run(seed())
    yield
    _FUZZ_APP.state.runtime = previous
    asyncio.run(runtime.engine.dispose())


@api_schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_mix_and_admin_api_never_answers_5xx(case: Any, fuzz_db: None) -> None:
    response = case.call(headers={"X-API-Key": ADMIN_KEY})
    assert response.status_code < 500, response.text
    case.validate_response(response, checks=[not_a_server_error])
