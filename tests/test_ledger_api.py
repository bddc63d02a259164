"""The local Jobcoin ledger: its HTTP API (through ASGI) and its core, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.chains.jobcoin import ledger
from mixhouse.chains.jobcoin.ledger_app import create_ledger_app
from mixhouse.db.engine import make_engine
from mixhouse.errors import InsufficientFunds, InvalidAddress, InvalidAmount, InvalidInput

COIN = 10**8
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
async def client(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_ledger_app(engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger") as http:
        yield http


async def _address(client: httpx.AsyncClient, address: str) -> dict[str, Any]:
    response = await client.get(f"/api/addresses/{address}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _snapshot(client: httpx.AsyncClient) -> tuple[Any, ...]:
    """Everything a refused request must leave unchanged."""
    history = (await client.get("/api/transactions")).json()
    alice = await _address(client, "Alice")
    bob = await _address(client, "Bob")
    return (history, alice, bob)


def _multipart(fields: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body with plain fields only (httpx adds files to force it)."""
    boundary = "mixhouse-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


async def test_unused_address_is_empty_not_404(client: httpx.AsyncClient) -> None:
    assert await _address(client, "Nobody") == {"balance": "0", "transactions": []}
    assert (await client.get("/api/transactions")).json() == []


async def test_mint_defaults_to_50_and_has_no_from_address(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/mint", json={"address": "Alice"})
    assert response.status_code == 200
    assert response.json() == {"status": "OK"}

    body = await _address(client, "Alice")
    assert body["balance"] == "50"
    [item] = body["transactions"]
    assert list(item) == ["timestamp", "toAddress", "amount"]
    assert item["toAddress"] == "Alice"
    assert item["amount"] == "50"
    assert TIMESTAMP.match(item["timestamp"])
    moment = datetime.strptime(item["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - moment) < timedelta(minutes=1)


async def test_mint_accepts_an_amount_as_form_and_multipart(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/mint", data={"address": "Alice", "amount": "12.5"})).status_code == 200
    body, headers = _multipart({"address": "Alice", "amount": "0.00000001"})
    assert (await client.post("/api/mint", content=body, headers=headers)).status_code == 200
    assert (await _address(client, "Alice"))["balance"] == "12.50000001"


async def test_send_json_form_and_multipart(client: httpx.AsyncClient) -> None:
    await client.post("/api/mint", json={"address": "Alice", "amount": "100"})

    response = await client.post(
        "/api/transactions", json={"fromAddress": "Alice", "toAddress": "Bob", "amount": "49.5"}
    )
    assert response.status_code == 200
    assert response.json() == {"status": "OK"}
    response = await client.post(
        "/api/transactions", data={"fromAddress": "Alice", "toAddress": "Bob", "amount": "0.5"}
    )
    assert response.status_code == 200
    body, headers = _multipart({"fromAddress": "Bob", "toAddress": "Carol", "amount": "10"})
    response = await client.post("/api/transactions", content=body, headers=headers)
    assert response.status_code == 200, response.text

    assert (await _address(client, "Alice"))["balance"] == "50"
    assert (await _address(client, "Carol"))["balance"] == "10"
    bob = await _address(client, "Bob")
    assert bob["balance"] == "40"
    assert [{k: v for k, v in item.items() if k != "timestamp"} for item in bob["transactions"]] == [
        {"fromAddress": "Alice", "toAddress": "Bob", "amount": "49.5"},
        {"fromAddress": "Alice", "toAddress": "Bob", "amount": "0.5"},
        {"fromAddress": "Bob", "toAddress": "Carol", "amount": "10"},
    ]
    assert list(bob["transactions"][0]) == ["timestamp", "fromAddress", "toAddress", "amount"]

    history = (await client.get("/api/transactions")).json()
    assert [(item.get("fromAddress"), item["toAddress"], item["amount"]) for item in history] == [
        (None, "Alice", "100"),
        ("Alice", "Bob", "49.5"),
        ("Alice", "Bob", "0.5"),
        ("Bob", "Carol", "10"),
    ]
    assert all(TIMESTAMP.match(item["timestamp"]) for item in history)


async def test_insufficient_funds_is_422_and_changes_nothing(client: httpx.AsyncClient) -> None:
    await client.post("/api/mint", json={"address": "Alice", "amount": "5"})
    before = await _snapshot(client)
    response = await client.post(
        "/api/transactions", json={"fromAddress": "Alice", "toAddress": "Bob", "amount": "5.00000001"}
    )
    assert response.status_code == 422
    assert response.json() == {"error": "Insufficient Funds"}
    # An address never seen has nothing to spend either.
    response = await client.post("/api/transactions", json={"fromAddress": "Nobody", "toAddress": "Bob", "amount": "1"})
    assert response.status_code == 422
    assert response.json() == {"error": "Insufficient Funds"}
    assert await _snapshot(client) == before


_GOOD = {"fromAddress": "Alice", "toAddress": "Bob", "amount": "1"}
_JSON = {"content-type": "application/json"}

BAD_SENDS: list[Any] = [
    pytest.param({"json": {**_GOOD, "amount": "-1"}}, id="negative"),
    pytest.param({"json": {**_GOOD, "amount": "0"}}, id="zero"),
    pytest.param({"json": {**_GOOD, "amount": "0.000"}}, id="zero-with-decimals"),
    pytest.param({"json": {**_GOOD, "amount": "0.000000001"}}, id="over-precise"),
    pytest.param({"json": {**_GOOD, "amount": "abc"}}, id="not-a-number"),
    pytest.param({"json": {**_GOOD, "amount": ""}}, id="empty-amount"),
    pytest.param({"json": {**_GOOD, "amount": " 1"}}, id="padded-amount"),
    pytest.param({"json": {**_GOOD, "amount": "1.2.3"}}, id="two-dots"),
    pytest.param({"json": {**_GOOD, "amount": "NaN"}}, id="nan"),
    pytest.param({"json": {**_GOOD, "amount": "Infinity"}}, id="infinity"),
    pytest.param({"json": {**_GOOD, "amount": "+1"}}, id="plus-sign"),
    pytest.param({"json": {**_GOOD, "amount": "-0"}}, id="minus-zero"),
    pytest.param({"json": {**_GOOD, "amount": "1_0"}}, id="underscore"),
    pytest.param({"json": {**_GOOD, "amount": "\u0661"}}, id="arabic-digit"),
    pytest.param({"json": {**_GOOD, "amount": "0E-29"}}, id="zero-exponent"),
    pytest.param({"json": {**_GOOD, "amount": "1E-9"}}, id="below-one-base-unit"),
    pytest.param({"json": {**_GOOD, "amount": "1" * 801}}, id="801-digits"),
    pytest.param({"json": {**_GOOD, "amount": 0}}, id="amount-json-zero"),
    pytest.param({"json": {**_GOOD, "amount": -1}}, id="amount-json-negative"),
    pytest.param({"json": {**_GOOD, "amount": True}}, id="amount-json-true"),
    pytest.param(
        {"content": b'{"fromAddress": "Alice", "toAddress": "Bob", "amount": NaN}', "headers": _JSON}, id="json-nan"
    ),
    pytest.param(
        {"content": b'{"fromAddress": "Alice", "toAddress": "Bob", "amount": 1e999999999}', "headers": _JSON},
        id="json-huge-exponent",
    ),
    pytest.param({"json": {**_GOOD, "amount": None}}, id="amount-null"),
    pytest.param({"json": {**_GOOD, "amount": ["1"]}}, id="amount-list"),
    pytest.param({"json": {k: v for k, v in _GOOD.items() if k != "amount"}}, id="missing-amount"),
    pytest.param({"json": {k: v for k, v in _GOOD.items() if k != "fromAddress"}}, id="missing-from"),
    pytest.param({"json": {k: v for k, v in _GOOD.items() if k != "toAddress"}}, id="missing-to"),
    pytest.param({"json": {}}, id="empty-object"),
    pytest.param({"content": b'{"fromAddress": "Alice",', "headers": _JSON}, id="malformed-json"),
    pytest.param({"content": b"", "headers": _JSON}, id="empty-json-body"),
    pytest.param({"content": b'["Alice", "Bob", "1"]', "headers": _JSON}, id="json-array"),
    pytest.param({"content": b"\xff\xfe", "headers": _JSON}, id="json-not-utf8"),
    pytest.param({"content": b"fromAddress=Alice", "headers": {"content-type": "text/plain"}}, id="text-plain"),
    pytest.param({"content": b"", "headers": {}}, id="no-body"),
    pytest.param({"json": {**_GOOD, "fromAddress": ""}}, id="empty-from"),
    pytest.param({"json": {**_GOOD, "toAddress": ""}}, id="empty-to"),
    pytest.param({"json": {**_GOOD, "toAddress": "x" * 200}}, id="200-char-address"),
    pytest.param({"json": {**_GOOD, "toAddress": " Bob"}}, id="padded-address"),
    pytest.param({"json": {**_GOOD, "toAddress": "Bo\nb"}}, id="control-char-address"),
    pytest.param({"json": {**_GOOD, "toAddress": 7}}, id="address-number"),
    pytest.param({"json": {**_GOOD, "toAddress": "Alice"}}, id="same-from-and-to"),
    pytest.param({"data": {**_GOOD, "amount": "-1"}}, id="form-negative"),
    pytest.param({"data": {"fromAddress": "Alice", "toAddress": "Bob"}}, id="form-missing-amount"),
    pytest.param({"data": {**_GOOD, "toAddress": ""}}, id="form-empty-to"),
    pytest.param({"data": {**_GOOD, "amount": ["1", "2"]}}, id="form-repeated-field"),
    pytest.param(
        {"data": {"fromAddress": "Alice", "toAddress": "Bob"}, "files": {"amount": ("a.txt", b"1")}},
        id="multipart-amount-as-file",
    ),
    pytest.param(
        {"content": b"--nope\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=xyz"}},
        id="broken-multipart",
    ),
]


@pytest.mark.parametrize("request_kwargs", BAD_SENDS)
async def test_bad_send_is_4xx_and_changes_nothing(client: httpx.AsyncClient, request_kwargs: dict[str, Any]) -> None:
    await client.post("/api/mint", json={"address": "Alice", "amount": "50"})
    before = await _snapshot(client)

    response = await client.post("/api/transactions", **request_kwargs)

    assert response.status_code in {400, 413, 415, 422}, response.text
    body = response.json()
    assert list(body) == ["error"]
    assert isinstance(body["error"], str)
    assert body["error"]
    assert body["error"] != "Insufficient Funds"
    assert await _snapshot(client) == before


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"amount": "5"}, id="missing-address"),
        pytest.param({"address": "Alice", "amount": "0"}, id="zero"),
        pytest.param({"address": "Alice", "amount": "-5"}, id="negative"),
        pytest.param({"address": "Alice", "amount": True}, id="boolean"),
        pytest.param({"address": "Alice", "amount": "0E-29"}, id="zero-exponent"),
        pytest.param({"address": "", "amount": "5"}, id="empty-address"),
        pytest.param({"address": "x" * 129, "amount": "5"}, id="long-address"),
    ],
)
async def test_bad_mint_is_4xx_and_changes_nothing(client: httpx.AsyncClient, payload: dict[str, Any]) -> None:
    before = await _snapshot(client)
    response = await client.post("/api/mint", json=payload)
    assert response.status_code == 422, response.text
    assert list(response.json()) == ["error"]
    assert await _snapshot(client) == before


async def test_invalid_address_lookup_is_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/addresses/" + "x" * 200)
    assert response.status_code == 422
    assert list(response.json()) == ["error"]


async def test_unknown_route_answers_with_error_body(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/nothing-here")
    assert response.status_code == 404
    assert list(response.json()) == ["error"]


async def test_index_page_has_mint_and_send_forms(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert 'action="api/mint"' in response.text
    assert 'action="api/transactions"' in response.text


async def test_concurrent_sends_never_overspend(client: httpx.AsyncClient) -> None:
    await client.post("/api/mint", json={"address": "Alice", "amount": "50"})
    seen_balances: list[str] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen_balances.append((await _address(client, "Alice"))["balance"])
            await asyncio.sleep(0)

    async def send(i: int) -> httpx.Response:
        return await client.post(
            "/api/transactions", json={"fromAddress": "Alice", "toAddress": f"Bob{i % 3}", "amount": "10"}
        )

    watcher = asyncio.create_task(watch())
    responses = await asyncio.gather(*(send(i) for i in range(20)))
    done.set()
    await watcher

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [422] * 15
    assert all(r.json() == {"error": "Insufficient Funds"} for r in responses if r.status_code == 422)
    assert (await _address(client, "Alice"))["balance"] == "0"
    bobs = [(await _address(client, f"Bob{i}"))["balance"] for i in range(3)]
    assert sum(int(b) for b in bobs) == 50
    assert seen_balances
    assert all(not b.startswith("-") for b in seen_balances)
    assert len((await client.get("/api/transactions")).json()) == 1 + 5


async def test_opposite_concurrent_sends_do_not_deadlock(client: httpx.AsyncClient) -> None:
    await client.post("/api/mint", json={"address": "Alice", "amount": "100"})
    await client.post("/api/mint", json={"address": "Bob", "amount": "100"})

    async def send(i: int) -> int:
        sender, receiver = ("Alice", "Bob") if i % 2 else ("Bob", "Alice")
        response = await client.post(
            "/api/transactions", json={"fromAddress": sender, "toAddress": receiver, "amount": "1"}
        )
        return response.status_code

    assert await asyncio.gather(*(send(i) for i in range(30))) == [200] * 30
    assert (await _address(client, "Alice"))["balance"] == "100"
    assert (await _address(client, "Bob"))["balance"] == "100"


# -- the core, without HTTP ---------------------------------------------------------------


async def test_core_transfer_and_address_info(engine: AsyncEngine) -> None:
    await ledger.mint(engine, "Alice", 3 * COIN)
    await ledger.transfer(engine, "Alice", "Bob", COIN + 1)
    async with engine.connect() as conn:
        alice_balance, alice_history = await ledger.address_info(conn, "Alice")
        bob_balance, bob_history = await ledger.address_info(conn, "Bob")
        everything = await ledger.all_transfers(conn)
    assert alice_balance == 2 * COIN - 1
    assert bob_balance == COIN + 1
    assert [(t.from_address, t.to_address, t.amount) for t in alice_history] == [
        (None, "Alice", 3 * COIN),
        ("Alice", "Bob", COIN + 1),
    ]
    assert bob_history == alice_history[1:]
    assert everything == alice_history
    assert all(isinstance(t.amount, int) for t in everything)


async def test_core_refusals(engine: AsyncEngine) -> None:
    await ledger.mint(engine, "Alice", COIN)
    with pytest.raises(InsufficientFunds):
        await ledger.transfer(engine, "Alice", "Bob", COIN + 1)
    with pytest.raises(InvalidInput):
        await ledger.transfer(engine, "Alice", "Alice", 1)
    with pytest.raises(InvalidAddress):
        await ledger.transfer(engine, "Alice", "Bob ", 1)
    with pytest.raises(InvalidAmount):
        await ledger.transfer(engine, "Alice", "Bob", 0)
    with pytest.raises(InvalidAmount):
        await ledger.mint(engine, "Alice", -1)
    async with engine.connect() as conn:
        assert await ledger.address_info(conn, "Bob") == (0, [])
        assert len(await ledger.all_transfers(conn)) == 1


@pytest.mark.parametrize("text", ["", " Alice", "Alice ", "x" * 129, "a\tb", "a\x00b", "\u200b"], ids=repr)
def test_validate_address_refuses(text: str) -> None:
    with pytest.raises(InvalidAddress):
        ledger.validate_address(text)


@pytest.mark.parametrize("text", ["Alice", "x" * 128, "two words", "a/b#c?d", "..", "Zoë"])
def test_validate_address_accepts(text: str) -> None:
    assert ledger.validate_address(text) == text


# -- the original Jobcoin routes and amounts third-party clients send (issue 14, item 12) --------


async def test_original_create_and_send_routes(client: httpx.AsyncClient) -> None:
    # Gemini's own routes: POST /create with a form field ``address`` mints 50.
    response = await client.post("/create", data={"address": "Alice"})
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "OK"}
    assert (await _address(client, "Alice"))["balance"] == "50"

    response = await client.post("/send", data={"fromAddress": "Alice", "toAddress": "Bob", "amount": "12.5"})
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "OK"}
    response = await client.post("/send", json={"fromAddress": "Alice", "toAddress": "Bob", "amount": "100"})
    assert (response.status_code, response.json()) == (422, {"error": "Insufficient Funds"})
    assert (await _address(client, "Alice"))["balance"] == "37.5"
    assert (await _address(client, "Bob"))["balance"] == "12.5"


async def test_json_number_amounts_are_read_exactly(client: httpx.AsyncClient) -> None:
    await client.post("/api/mint", json={"address": "Alice", "amount": 100})
    response = await client.post("/api/transactions", json={"fromAddress": "Alice", "toAddress": "Bob", "amount": 37})
    assert response.status_code == 200, response.text
    # Parsed as the decimal text, not through a float (0.1 + 0.2 style errors cannot appear).
    raw = b'{"fromAddress": "Alice", "toAddress": "Carol", "amount": 0.30000000}'
    response = await client.post("/send", content=raw, headers=_JSON)
    assert response.status_code == 200, response.text
    assert (await _address(client, "Bob"))["balance"] == "37"
    assert (await _address(client, "Carol"))["balance"] == "0.3"
    assert (await _address(client, "Alice"))["balance"] == "62.7"


@pytest.mark.parametrize(
    ("sent", "moved"),
    [
        ("48.99999999999999997918331829", "48.99999999"),
        ("4.2090000000000005", "4.209"),
        ("0.0200000000000000004163336342344337026588618755340576171875", "0.02"),  # Decimal(0.02)
        ("1E-7", "0.0000001"),
        ("1e1", "10"),
        ("0.000000019", "0.00000001"),
    ],
)
async def test_finer_amounts_are_rounded_down_to_8_decimals(client: httpx.AsyncClient, sent: str, moved: str) -> None:
    await client.post("/api/mint", json={"address": "Alice", "amount": "50"})
    response = await client.post("/api/transactions", json={"fromAddress": "Alice", "toAddress": "Bob", "amount": sent})
    assert response.status_code == 200, response.text
    bob = await _address(client, "Bob")
    assert bob["balance"] == moved
    assert bob["transactions"][-1]["amount"] == moved
    alice = await _address(client, "Alice")
    # Exactly what was moved left the sender: the books balance to the base unit.
    total = ledger.parse_wire_amount(alice["balance"]) + ledger.parse_wire_amount(moved)
    assert total == 50 * COIN


async def test_a_float_splitting_client_pays_every_part(client: httpx.AsyncClient) -> None:
    """A third-party mixer that splits 50 into thirds with floats: every part is paid, the
    remainder below one base unit per part stays with it, and no coin is lost."""
    await client.post("/create", data={"address": "house"})
    part = 50 / 3  # 16.666666666666668: the float sum of three parts exceeds 50
    statuses = [
        (await client.post("/send", data={"fromAddress": "house", "toAddress": f"user{i}", "amount": str(part)}))
        for i in range(3)
    ]
    assert [r.status_code for r in statuses] == [200, 200, 200], [r.text for r in statuses]
    balances = [ledger.parse_wire_amount((await _address(client, f"user{i}"))["balance"]) for i in range(3)]
    assert balances == [1_666_666_666] * 3
    house = (await _address(client, "house"))["balance"]
    assert house == "0.00000002"
    assert sum(balances) + ledger.parse_wire_amount(house) == 50 * COIN


async def test_ledger_openapi_describes_every_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert set(spec["paths"]) == {
        "/api/addresses/{address}",
        "/api/transactions",
        "/api/transactions/batch",
        "/api/incoming",
        "/api/mint",
        "/send",
        "/create",
    }
    send = spec["paths"]["/send"]["post"]
    assert set(send["requestBody"]["content"]) == {
        "application/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    }
    assert {"200", "400", "413", "422"} <= set(send["responses"])
    assert (await client.get("/docs")).status_code == 200


async def test_ledger_405_lists_every_method(client: httpx.AsyncClient) -> None:
    response = await client.delete("/api/transactions")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert list(response.json()) == ["error"]


# -- hostile bodies (issue 14, items 1 and 2) ----------------------------------------------------


async def test_deep_json_is_400_not_500_and_changes_nothing(client: httpx.AsyncClient) -> None:
    await client.post("/api/mint", json={"address": "Alice", "amount": "50"})
    before = await _snapshot(client)
    for depth in (5_000, 100_000):
        body = b'{"fromAddress": "Alice", "toAddress": "Bob", "amount": "1", "x": ' + b"[" * depth + b"]" * depth + b"}"
        response = await client.post("/api/transactions", content=body, headers=_JSON)
        assert response.status_code == 400, response.text
        assert "deeper than" in response.json()["error"]
    assert await _snapshot(client) == before


async def test_a_send_inside_a_10_mib_body_is_refused(client: httpx.AsyncClient) -> None:
    await client.post("/api/mint", json={"address": "Alice", "amount": "50"})
    before = await _snapshot(client)
    padded = {**_GOOD, "padding": "x" * (10 << 20)}
    response = await client.post("/api/transactions", json=padded)
    assert response.status_code == 413, response.text
    assert list(response.json()) == ["error"]
    response = await client.post("/send", data={**_GOOD, "padding": "x" * (2 << 20)})
    assert response.status_code == 413, response.text

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the guard must count what it reads.
        yield b'{"fromAddress": "Alice", "toAddress": "Bob", "amount": "1", "padding": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    response = await client.post("/api/transactions", content=chunks(), headers=_JSON)
    assert response.status_code == 413, response.text
    assert await _snapshot(client) == before


async def test_nul_in_the_path_is_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/addresses/Al%00ice")
    assert response.status_code == 400
    assert "NUL" in response.json()["error"]


async def test_ledger_database_down_is_503() -> None:
    # A port nothing listens on: every connection attempt is refused.
    down = make_engine("postgresql://postgres@127.0.0.1:9/nothing")
    try:
        transport = httpx.ASGITransport(app=create_ledger_app(down))
        async with httpx.AsyncClient(transport=transport, base_url="http://ledger") as http:
            response = await http.get("/api/transactions")
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "5"
            response = await http.post("/send", json=_GOOD)
            assert response.status_code == 503, response.text
    finally:
        await down.dispose()


async def test_history_after_a_cursor_pages_with_ids(client: httpx.AsyncClient) -> None:
    for name in ("Alice", "Bob", "Carol"):
        assert (await client.post("/api/mint", json={"address": name})).status_code == 200
    everything = (await client.get("/api/transactions")).json()
    assert all("id" not in item for item in everything)  # the original answer, unchanged
    first = (await client.get("/api/transactions", params={"after": "0", "limit": "2"})).json()
    assert [item["toAddress"] for item in first] == ["Alice", "Bob"]
    assert [{k: v for k, v in item.items() if k != "id"} for item in first] == everything[:2]
    rest = (await client.get("/api/transactions", params={"after": str(first[-1]["id"])})).json()
    assert [item["toAddress"] for item in rest] == ["Carol"]
    assert (await client.get("/api/transactions", params={"after": str(rest[-1]["id"])})).json() == []


@pytest.mark.parametrize("query", ["after=-1", "after=x", "after=1&limit=0", "limit=10001&after=0", "after=1e3"])
async def test_bad_history_cursor_is_422(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/api/transactions?{query}")
    assert response.status_code == 422
    assert "error" in response.json()


async def test_batch_send_moves_each_transfer_on_its_own(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/mint", json={"address": "Alice", "amount": "10"})).status_code == 200
    items = [
        {"fromAddress": "Alice", "toAddress": "Bob", "amount": "4"},
        {"fromAddress": "Alice", "toAddress": "Carol", "amount": "7"},  # only 6 left
        {"fromAddress": "Alice", "toAddress": "", "amount": "1"},
        {"fromAddress": "Alice", "toAddress": "Carol", "amount": "6"},
    ]
    response = await client.post("/api/transactions/batch", json={"transactions": items})
    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0] == {"status": "OK"}
    assert results[3] == {"status": "OK"}
    assert results[1] == {"error": "Insufficient Funds"}
    assert "toAddress" in results[2]["error"]
    assert (await _address(client, "Alice"))["balance"] == "0"
    assert (await _address(client, "Carol"))["balance"] == "6"


@pytest.mark.parametrize("body", [{}, {"transactions": []}, {"transactions": "x"}, {"transactions": [1]}])
async def test_batch_send_refuses_a_body_that_is_not_a_list_of_transfers(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    before = await _snapshot(client)
    response = await client.post("/api/transactions/batch", json=body)
    assert response.status_code == 422
    assert "error" in response.json()
    assert await _snapshot(client) == before


async def test_incoming_lists_each_address_received_transfers_in_its_own_order(client: httpx.AsyncClient) -> None:
    """``POST /api/incoming``: per address, what it received, oldest first, with ids; the n-th
    item is the n-th incoming transfer of its ``GET /api/addresses`` history."""
    await client.post("/api/mint", json={"address": "Alice", "amount": "100"})
    await client.post("/api/transactions", json={"fromAddress": "Alice", "toAddress": "Bob", "amount": "3"})
    await client.post("/api/transactions", json={"fromAddress": "Bob", "toAddress": "Carol", "amount": "1"})
    await client.post("/api/transactions", json={"fromAddress": "Alice", "toAddress": "Bob", "amount": "2.5"})
    response = await client.post("/api/incoming", json={"addresses": ["Bob", "Carol", "Nobody", "Bob"]})
    assert response.status_code == 200, response.text
    found = response.json()["incoming"]
    assert set(found) == {"Bob", "Carol", "Nobody"}
    assert found["Nobody"] == []
    for address in ("Bob", "Carol"):
        history = [t for t in (await _address(client, address))["transactions"] if t["toAddress"] == address]
        assert [{k: v for k, v in item.items() if k != "id"} for item in found[address]] == history
        ids = [item["id"] for item in found[address]]
        assert ids == sorted(ids)
        assert all(isinstance(i, int) for i in ids)
    assert [t["amount"] for t in found["Bob"]] == ["3", "2.5"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"addresses": []},
        {"addresses": "Bob"},
        {"addresses": [1]},
        {"addresses": [" Bob"]},
        {"addresses": ["a"] * 1001},
    ],
)
async def test_incoming_refuses_what_is_not_a_list_of_addresses(client: httpx.AsyncClient, body: Any) -> None:
    response = await client.post("/api/incoming", json=body)
    assert response.status_code == 422
    assert list(response.json()) == ["error"]
