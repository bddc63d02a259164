"""Fuzzing the local Jobcoin ledger: hypothesis bodies against every POST route, and
schemathesis over its OpenAPI description.

Both hold the ledger to: no 5xx, ever; a refusal is ``{"error": str}`` and changes nothing;
an accepted write changes exactly what it says.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from mixhouse.chains.jobcoin import ledger
from mixhouse.chains.jobcoin.ledger_app import create_ledger_app
from mixhouse.db.engine import sqlalchemy_url

COIN = 10**8
ROUTES = ["/api/transactions", "/send", "/api/mint", "/create"]
FIELDS = ["fromAddress", "toAddress", "address", "amount"]
ADDRESSES = ["Alice", "Bob", "", " Bob", "Bo\x00b", "x" * 129, "Zoë", "a/b"]

# Values a client might put in a field: good ones, near misses, and junk of every JSON type.
_amount_texts = st.one_of(
    st.sampled_from(["1", "0.5", "49.99999999", "1E-7", "0E-29", "-1", "+1", " 1", "1e99", "NaN", "", "."]),
    st.decimals(allow_nan=False, allow_infinity=False, places=None).map(str),
    st.text(alphabet="0123456789.eE+-_ ", max_size=20),
)
_json_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**80), max_value=10**80),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(ADDRESSES),
        _amount_texts,
        st.text(max_size=30),
    ),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)
_json_objects = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), _json_values, max_size=5)
_form_values = st.one_of(st.sampled_from(ADDRESSES), _amount_texts, st.text(max_size=20))
_bodies = st.one_of(
    _json_objects.map(lambda obj: ("application/json", json.dumps(obj).encode())),
    st.dictionaries(st.sampled_from(FIELDS), _form_values, max_size=4).map(
        lambda form: ("application/x-www-form-urlencoded", str(httpx.QueryParams(form)).encode())
    ),
    st.binary(max_size=200).map(lambda raw: ("application/json", raw)),
    st.tuples(
        st.sampled_from(["text/plain", "", "multipart/form-data; boundary=b", "application/xml"]),
        st.binary(max_size=50),
    ),
    st.integers(min_value=1, max_value=10_000).map(lambda depth: ("application/json", b"[" * depth + b"]" * depth)),
)


async def _state(http: httpx.AsyncClient) -> Any:
    """Everything a request could change: the whole history (balances follow from it)."""
    response = await http.get("/api/transactions")
    assert response.status_code == 200
    return response.json()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(ROUTES), body=_bodies)
def _fuzz_one(loop: asyncio.AbstractEventLoop, http: httpx.AsyncClient, route: str, body: tuple[str, bytes]) -> None:
    content_type, raw = body
    headers = {"content-type": content_type} if content_type else {}

    async def check() -> None:
        before = await _state(http)
        response = await http.post(route, content=raw, headers=headers)
        assert response.status_code < 500, (route, raw[:200], response.text)
        after = await _state(http)
        if response.status_code == 200:
            assert response.json() == {"status": "OK"}
            assert len(after) == len(before) + 1, (route, raw[:200])
            # A mint has no sender; a send has one.
            assert ("fromAddress" in after[-1]) == (route in {"/api/transactions", "/send"})
            assert after[: len(before)] == before
            assert ledger.parse_wire_amount(after[-1]["amount"]) > 0
        else:
            assert response.status_code in {400, 413, 415, 422}, (route, raw[:200], response.text)
            body = response.json()
            assert list(body) == ["error"]
            assert isinstance(body["error"], str)
            assert body["error"]
            assert after == before, (route, raw[:200])

    loop.run_until_complete(check())


def test_ledger_post_body_fuzz(database_url: str) -> None:
    """Random bodies on every POST route: never a 5xx, and a refusal changes nothing."""
    loop = asyncio.new_event_loop()
    engine = create_async_engine(sqlalchemy_url(database_url), poolclass=NullPool)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_ledger_app(engine)), base_url="http://ledger")
    try:
        # Funds, so that well-formed sends from Alice can succeed and be checked too.
        loop.run_until_complete(ledger.mint(engine, "Alice", 10**6 * COIN))
        _fuzz_one(loop, http)
    finally:
        loop.run_until_complete(http.aclose())
        loop.run_until_complete(engine.dispose())
        loop.close()


# -- schemathesis over the ledger's OpenAPI -----------------------------------------------------
#
# As in tests/test_wallets_api.py: the schema is loaded at import from an app whose engine the
# fixture replaces with one on the test's database, without a pool (schemathesis calls the app
# from its own event loop).

_FUZZ_APP = create_ledger_app(
    create_async_engine(sqlalchemy_url("postgresql://unused@127.0.0.1/unused"), poolclass=NullPool)
)
ledger_schema = schemathesis.openapi.from_asgi("/openapi.json", _FUZZ_APP)


@pytest.fixture
def ledger_db(database_url: str) -> Iterator[None]:
    """Point the fuzzed app at this test's database, with coins at Alice."""
    engine = create_async_engine(sqlalchemy_url(database_url), poolclass=NullPool)
    asyncio.run(ledger.mint(engine, "Alice", 1000 * COIN))
    previous = _FUZZ_APP.state.engine
    _FUZZ_APP.state.engine = engine
    yield
    _FUZZ_APP.state.engine = previous
    asyncio.run(engine.dispose())


@ledger_schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_ledger_openapi_never_answers_5xx(case: Any, ledger_db: None) -> None:
    # The long poll waits up to wait_ms (at most 30 s) for a transfer that never comes here:
    # generated waits are cut to 20 ms, so 40 examples stay seconds, not minutes (values the
    # route must refuse, negative or over its maximum or not numbers, are left as generated).
    wait_ms = (case.query or {}).get("wait_ms")
    if isinstance(wait_ms, int) and 20 < wait_ms <= 30_000:
        case.query["wait_ms"] = 20
    response = case.call()
    assert response.status_code < 500, response.text
    case.validate_response(response, checks=[not_a_server_error])
