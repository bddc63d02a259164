"""The Jobcoin adapter against the local ledger served by a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.chains.base import FeeQuote, PreparedSend, SendState, Transfer
from mixhouse.chains.jobcoin import ledger
from mixhouse.chains.jobcoin.adapter import JobcoinAdapter
from mixhouse.chains.jobcoin.ledger_app import ledger_server
from mixhouse.errors import (
    BroadcastRejected,
    ChainError,
    ConfigError,
    InvalidAddress,
    SendOutcomeUnknown,
)
from mixhouse.money import Asset
from tests.scanning import engine_scan

COIN = 10**8
SECRET = b"test-secret-0123456789abcdef"
POOL = "mixhouse-pool"
NO_FEE = FeeQuote(0, "none")


@pytest.fixture
async def api_url(engine: AsyncEngine) -> AsyncIterator[str]:
    """A running ledger server's API root; the socket is bound first so the port is ours."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = ledger_server(engine, "127.0.0.1", port, log_level="warning")
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not server.started:
            assert not task.done(), "the ledger server stopped while starting"
            await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@pytest.fixture
async def adapter(api_url: str) -> AsyncIterator[JobcoinAdapter]:
    chain = JobcoinAdapter(api_url, POOL, address_secret=SECRET)
    yield chain
    await chain.aclose()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _mocked(handler: httpx.MockTransport) -> JobcoinAdapter:
    return JobcoinAdapter(
        "http://ledger.test/api", POOL, address_secret=SECRET, client=httpx.AsyncClient(transport=handler)
    )


def _send(amount: int, from_address: str = POOL, to_address: str = "Bob") -> PreparedSend:
    return PreparedSend(from_address, to_address, amount, 0, None, None, None)


# -- without a server ---------------------------------------------------------------------


def test_attributes() -> None:
    chain = JobcoinAdapter("http://127.0.0.1:1/api/", POOL, address_secret=SECRET)
    assert chain.asset == Asset.JOBCOIN
    assert chain.confirmations_required == 1
    assert chain.has_idempotent_send is False
    assert chain.pool_address == POOL


def test_constructor_refusals() -> None:
    with pytest.raises(ConfigError):
        JobcoinAdapter("http://127.0.0.1:1/api", POOL, address_secret=b"short")
    with pytest.raises(InvalidAddress):
        JobcoinAdapter("http://127.0.0.1:1/api", " pool", address_secret=SECRET)


@pytest.mark.parametrize("text", ["Alice", "mix-0123abcd", "x" * 128, "a/b#c", "two words", "Zoë"])
def test_normalize_address_accepts_unchanged(text: str) -> None:
    chain = JobcoinAdapter("http://127.0.0.1:1/api", POOL, address_secret=SECRET)
    assert chain.normalize_address(text) == text


@pytest.mark.parametrize("text", ["", " Alice", "Alice ", "Alice\n", "x" * 129, "a\x07b"], ids=repr)
def test_normalize_address_refuses(text: str) -> None:
    chain = JobcoinAdapter("http://127.0.0.1:1/api", POOL, address_secret=SECRET)
    with pytest.raises(InvalidAddress):
        chain.normalize_address(text)


def test_deposit_address_is_deterministic_distinct_and_secret_bound() -> None:
    chain = JobcoinAdapter("http://127.0.0.1:1/api", POOL, address_secret=SECRET)
    same = JobcoinAdapter("http://127.0.0.1:1/api", POOL, address_secret=SECRET)
    other = JobcoinAdapter("http://127.0.0.1:1/api", POOL, address_secret=SECRET + b"!")
    addresses = [chain.deposit_address(i) for i in range(200)]
    assert addresses == [same.deposit_address(i) for i in range(200)]
    assert len(set(addresses)) == 200
    assert all(re.fullmatch(r"[0-9a-f]{24}", a) for a in addresses)
    assert all(chain.normalize_address(a) == a for a in addresses)
    assert not set(addresses) & {other.deposit_address(i) for i in range(200)}
    with pytest.raises(ValueError, match="out of range"):
        chain.deposit_address(-1)


async def test_fee_nonce_and_prepare() -> None:
    chain = JobcoinAdapter("http://127.0.0.1:1/api", POOL, address_secret=SECRET)
    fee = await chain.quote_network_fee()
    assert fee == FeeQuote(0, "Jobcoin transfers have no network fee")
    assert await chain.next_nonce(POOL) is None
    prepared = await chain.prepare_send(
        from_address=POOL, from_key_index=None, to_address="Bob", amount=5, fee=fee, nonce=None
    )
    assert prepared == PreparedSend(POOL, "Bob", 5, network_fee_max=0, raw_tx=None, txid=None, nonce=None)
    await chain.aclose()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(httpx.ReadTimeout("slow"), SendOutcomeUnknown, id="read-timeout"),
        pytest.param(httpx.RemoteProtocolError("dropped"), SendOutcomeUnknown, id="dropped"),
        pytest.param(httpx.WriteError("half sent"), SendOutcomeUnknown, id="write-error"),
        pytest.param(httpx.ConnectError("refused"), ChainError, id="connect-error"),
        pytest.param(httpx.ConnectTimeout("no answer"), ChainError, id="connect-timeout"),
        pytest.param(httpx.Response(500, text="boom"), SendOutcomeUnknown, id="500"),
        pytest.param(httpx.Response(503), SendOutcomeUnknown, id="503"),
        pytest.param(httpx.Response(400, json={"error": "nope"}), BroadcastRejected, id="400"),
        pytest.param(httpx.Response(422, json={"error": "Insufficient Funds"}), BroadcastRejected, id="422"),
    ],
)
async def test_broadcast_error_mapping(answer: httpx.Response | Exception, expected: type[ChainError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        return answer

    chain = _mocked(httpx.MockTransport(handler))
    with pytest.raises(ChainError) as caught:
        await chain.broadcast(_send(COIN))
    assert type(caught.value) is expected
    if isinstance(answer, httpx.Response) and answer.status_code in {400, 422}:
        assert answer.json()["error"] in str(caught.value)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(httpx.Response(500), id="500"),
        pytest.param(httpx.Response(200, text="not json"), id="not-json"),
        pytest.param(httpx.Response(200, json=[]), id="not-an-object"),
        pytest.param(httpx.Response(200, json={"balance": "1", "transactions": None}), id="no-list"),
        pytest.param(httpx.Response(200, json={"balance": 1, "transactions": []}), id="number-balance"),
        pytest.param(httpx.Response(200, json={"balance": "-1", "transactions": []}), id="negative"),
        pytest.param(httpx.Response(200, json={"balance": "1e3", "transactions": []}), id="exponent"),
        pytest.param(httpx.Response(200, json={"balance": "0.000000001", "transactions": []}), id="too-fine"),
        pytest.param(
            httpx.Response(200, json={"balance": "0", "transactions": [{"toAddress": 5, "amount": "1"}]}),
            id="bad-item",
        ),
        pytest.param(httpx.ReadTimeout("slow"), id="timeout"),
        pytest.param(httpx.ConnectError("refused"), id="refused"),
    ],
)
async def test_reads_map_every_failure_to_chain_error(answer: httpx.Response | Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/transactions"):
            return httpx.Response(404)  # no history cursor: the scan reads every address
        if isinstance(answer, Exception):
            raise answer
        return answer

    chain = _mocked(httpx.MockTransport(handler))
    with pytest.raises(ChainError):
        await chain.balance("Alice")
    with pytest.raises(ChainError):
        await engine_scan(chain, ["Alice", "Bob"], None)


async def test_long_wire_amounts_are_exact() -> None:
    # 39 significant digits: more than Decimal's default 28-digit context would keep.
    big = "1234567890123456789012345678901.12345678"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/transactions"):
            return httpx.Response(404)
        return httpx.Response(200, json={"balance": big, "transactions": [{"toAddress": "Alice", "amount": big}]})

    chain = _mocked(httpx.MockTransport(handler))
    assert await chain.balance("Alice") == 123456789012345678901234567890112345678
    [found] = (await engine_scan(chain, ["Alice"], None)).transfers
    assert found.amount == 123456789012345678901234567890112345678
    assert found.from_addresses == ()


async def test_aclose_leaves_a_given_client_open() -> None:
    client = httpx.AsyncClient()
    chain = JobcoinAdapter("http://127.0.0.1:1/api", POOL, address_secret=SECRET, client=client)
    await chain.aclose()
    assert not client.is_closed
    await client.aclose()
    owned = JobcoinAdapter("http://127.0.0.1:1/api", POOL, address_secret=SECRET)
    await owned.aclose()
    assert owned._client.is_closed


# -- against the real ledger server -------------------------------------------------------


async def test_balance(adapter: JobcoinAdapter, engine: AsyncEngine) -> None:
    assert await adapter.balance("Nobody") == 0
    await ledger.mint(engine, "Alice", 1_250_000_001)
    assert await adapter.balance("Alice") == 1_250_000_001


async def test_scan_finds_minted_and_sent_transfers_with_stable_refs(
    adapter: JobcoinAdapter, engine: AsyncEngine
) -> None:
    d0, d1, unwatched = (adapter.deposit_address(i) for i in range(3))
    await ledger.mint(engine, d0, 5 * COIN)
    await ledger.mint(engine, "Alice", 100 * COIN)
    await ledger.transfer(engine, "Alice", d0, 12 * COIN + 34)
    await ledger.transfer(engine, "Alice", unwatched, COIN)
    await ledger.transfer(engine, d0, "Carol", COIN)  # outgoing: not a deposit

    first = await engine_scan(adapter, [d0, d1, d0], None)
    assert first.cursor is not None  # our ledger has the history cursor
    assert first.transfers == (
        Transfer(d0, (), 5 * COIN, f"{d0}#0", None, 1),
        Transfer(d0, ("Alice",), 12 * COIN + 34, f"{d0}#1", None, 1),
    )

    await ledger.transfer(engine, "Alice", d1, 2 * COIN)
    await ledger.transfer(engine, "Alice", d0, 3 * COIN)
    second = await engine_scan(adapter, [d0, d1], first.cursor)
    assert second.transfers[:2] == first.transfers
    assert set(second.transfers[2:]) == {
        Transfer(d0, ("Alice",), 3 * COIN, f"{d0}#2", None, 1),
        Transfer(d1, ("Alice",), 2 * COIN, f"{d1}#0", None, 1),
    }
    assert (await engine_scan(adapter, [], None)).transfers == ()


async def test_scan_reads_only_addresses_paid_since_the_scan_before_last(
    adapter: JobcoinAdapter, engine: AsyncEngine
) -> None:
    d0, d1, d2 = (adapter.deposit_address(i) for i in range(3))
    await ledger.mint(engine, d0, COIN)
    first = await engine_scan(adapter, [d0, d1], None)
    assert [t.ref for t in first.transfers] == [f"{d0}#0"]
    await ledger.mint(engine, d1, COIN)
    second = await engine_scan(adapter, [d0, d1], first.cursor)
    # Every part of the history is read by two consecutive scans.
    assert [t.ref for t in second.transfers] == [f"{d0}#0", f"{d1}#0"]
    third = await engine_scan(adapter, [d0, d1], second.cursor)
    assert [t.ref for t in third.transfers] == [f"{d1}#0"]
    fourth = await engine_scan(adapter, [d0, d1], third.cursor)
    assert fourth.transfers == ()
    # A mix created while a scan ran: its address was not watched by the scan that read its
    # deposit, and the next scan, which watches it, still finds it.
    await ledger.mint(engine, d2, 2 * COIN)
    missed = await engine_scan(adapter, [d0, d1], fourth.cursor)
    assert missed.transfers == ()
    [found] = (await engine_scan(adapter, [d0, d1, d2], missed.cursor)).transfers
    assert (found.ref, found.amount) == (f"{d2}#0", 2 * COIN)


async def test_scan_falls_back_to_every_address_without_the_cursor() -> None:
    """The original API ignores ``after`` and lists the whole history without ids."""
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if request.url.path.endswith("/transactions"):
            return httpx.Response(200, json=[{"toAddress": "Alice", "amount": "1"}])
        return httpx.Response(200, json={"balance": "1", "transactions": [{"toAddress": "Alice", "amount": "1"}]})

    chain = _mocked(httpx.MockTransport(handler))
    for _ in range(2):
        result = await engine_scan(chain, ["Alice"], None)
        assert [t.ref for t in result.transfers] == ["Alice#0"]
        assert result.cursor is None
    # The history was asked once; after that the adapter knows the ledger has no cursor.
    assert asked == ["/api/transactions", "/api/addresses/Alice", "/api/addresses/Alice"]


async def test_scan_many_addresses_concurrently(adapter: JobcoinAdapter, engine: AsyncEngine) -> None:
    addresses = [adapter.deposit_address(i) for i in range(40)]
    for i, address in enumerate(addresses):
        await ledger.mint(engine, address, (i + 1) * COIN)
    result = await engine_scan(adapter, addresses, None)
    assert [(t.to_address, t.amount, t.ref) for t in result.transfers] == [
        (a, (i + 1) * COIN, f"{a}#0") for i, a in enumerate(addresses)
    ]


async def test_scan_reads_every_paid_address_in_one_request(api_url: str, engine: AsyncEngine) -> None:
    """On our ledger the paid addresses' incoming transfers come in one ``POST /incoming``,
    with the same refs their own histories give."""
    asked: list[str] = []

    async def record(request: httpx.Request) -> None:
        asked.append(f"{request.method} {request.url.path}")

    client = httpx.AsyncClient(event_hooks={"request": [record]})
    chain = JobcoinAdapter(api_url, POOL, address_secret=SECRET, client=client)
    try:
        addresses = [chain.deposit_address(i) for i in range(30)]
        await ledger.mint(engine, "Alice", 1000 * COIN)
        for i, address in enumerate(addresses):
            await ledger.transfer(engine, "Alice", address, (i + 1) * COIN)
            if i % 3 == 0:
                await ledger.transfer(engine, address, "Bob", COIN)  # outgoing: not a deposit
                await ledger.transfer(engine, "Alice", address, 7)
        result = await engine_scan(chain, [*addresses, "unpaid-address"], None)
        assert asked == ["GET /api/transactions", "POST /api/incoming"]
        expected = []
        for i, address in enumerate(addresses):
            expected.append(Transfer(address, ("Alice",), (i + 1) * COIN, f"{address}#0", None, 1))
            if i % 3 == 0:
                expected.append(Transfer(address, ("Alice",), 7, f"{address}#1", None, 1))
        assert result.transfers == tuple(expected)
        for transfer in result.transfers:
            assert await chain.transfer_confirmations(transfer) == 1  # the per-address history agrees
    finally:
        await client.aclose()


async def test_scan_reads_addresses_one_by_one_on_a_ledger_without_the_incoming_route() -> None:
    """A cursor ledger without ``POST /incoming`` (404): one GET per paid address, and the
    adapter remembers not to ask again."""
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(f"{request.method} {request.url.path}")
        if request.url.path.endswith("/transactions"):
            return httpx.Response(200, json=[{"id": 1, "toAddress": "Alice", "amount": "1"}])
        if request.url.path.endswith("/incoming"):
            return httpx.Response(404, json={"error": "Not Found"})
        return httpx.Response(200, json={"balance": "1", "transactions": [{"toAddress": "Alice", "amount": "1"}]})

    chain = _mocked(httpx.MockTransport(handler))
    for _ in range(2):
        result = await engine_scan(chain, ["Alice"], None)
        assert [t.ref for t in result.transfers] == ["Alice#0"]
    assert asked == [
        "GET /api/transactions",
        "POST /api/incoming",
        "GET /api/addresses/Alice",
        "GET /api/transactions",
        "GET /api/addresses/Alice",
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"incoming": {}},  # the address is missing
        {"incoming": {"Alice": [{"toAddress": "Mallory", "amount": "1"}]}},  # another receiver
        {"incoming": {"Alice": [{"toAddress": "Alice", "amount": "1.000000001"}]}},
        ["not", "an", "object"],
    ],
)
async def test_scan_refuses_an_incoming_answer_it_cannot_trust(body: Any) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/transactions"):
            return httpx.Response(200, json=[{"id": 1, "toAddress": "Alice", "amount": "1"}])
        return httpx.Response(200, json=body)

    with pytest.raises(ChainError):
        await engine_scan(_mocked(httpx.MockTransport(handler)), ["Alice"], None)


@pytest.mark.parametrize("name", ["a/b#c", "..", ".", "what?x=1", "100%", "Zoë & co"])
async def test_odd_names_survive_the_url(adapter: JobcoinAdapter, engine: AsyncEngine, name: str) -> None:
    await ledger.mint(engine, name, 7 * COIN)
    assert await adapter.balance(name) == 7 * COIN
    [found] = (await engine_scan(adapter, [name], None)).transfers
    assert found.ref == f"{name}#0"
    assert await adapter.transfer_confirmations(found) == 1


async def test_transfer_confirmations(adapter: JobcoinAdapter, engine: AsyncEngine) -> None:
    d0 = adapter.deposit_address(0)
    await ledger.mint(engine, d0, 5 * COIN)
    [seen] = (await engine_scan(adapter, [d0], None)).transfers
    assert await adapter.transfer_confirmations(seen) == 1
    assert await adapter.transfer_confirmations(replace(seen, amount=6 * COIN)) is None
    assert await adapter.transfer_confirmations(replace(seen, ref=f"{d0}#1")) is None
    with pytest.raises(ChainError):
        await adapter.transfer_confirmations(replace(seen, ref="no-position"))


async def test_send_and_check_send_with_earlier_sends(adapter: JobcoinAdapter, engine: AsyncEngine) -> None:
    await ledger.mint(engine, POOL, 100 * COIN)
    fee = await adapter.quote_network_fee()
    first = await adapter.prepare_send(
        from_address=POOL, from_key_index=None, to_address="Bob", amount=10 * COIN, fee=fee, nonce=None
    )
    second = await adapter.prepare_send(
        from_address=POOL, from_key_index=None, to_address="Bob", amount=20 * COIN + 1, fee=fee, nonce=None
    )
    not_found = await adapter.check_send(first, earlier_sends=0)
    assert not_found.state is SendState.NOT_FOUND
    assert not_found.confirmations == 0
    assert not_found.network_fee_paid is None

    await adapter.broadcast(first)
    # Other traffic of the pool must not disturb the count of the pool -> Bob pair.
    await ledger.transfer(engine, POOL, "Carol", COIN)
    await ledger.mint(engine, POOL, COIN)
    await adapter.broadcast(second)

    found_first = await adapter.check_send(first, earlier_sends=0)
    assert (found_first.state, found_first.confirmations, found_first.network_fee_paid) == (
        SendState.CONFIRMED,
        1,
        0,
    )
    assert (await adapter.check_send(second, earlier_sends=1)).state is SendState.CONFIRMED
    assert (await adapter.check_send(second, earlier_sends=2)).state is SendState.NOT_FOUND
    with pytest.raises(ChainError, match="expected"):
        await adapter.check_send(second, earlier_sends=0)

    assert await adapter.balance(POOL) == 100 * COIN - 10 * COIN - COIN + COIN - (20 * COIN + 1)
    assert await adapter.balance("Bob") == 30 * COIN + 1


async def test_broadcast_insufficient_funds_is_rejected_and_moves_nothing(
    adapter: JobcoinAdapter, engine: AsyncEngine
) -> None:
    await ledger.mint(engine, POOL, COIN)
    with pytest.raises(BroadcastRejected, match="Insufficient Funds"):
        await adapter.broadcast(_send(COIN + 1))
    assert await adapter.balance(POOL) == COIN
    assert await adapter.balance("Bob") == 0
    assert (await adapter.check_send(_send(COIN + 1), earlier_sends=0)).state is SendState.NOT_FOUND


async def test_broadcast_invalid_send_is_rejected(adapter: JobcoinAdapter, engine: AsyncEngine) -> None:
    await ledger.mint(engine, POOL, COIN)
    with pytest.raises(BroadcastRejected, match="same address"):
        await adapter.broadcast(_send(1, to_address=POOL))
    assert await adapter.balance(POOL) == COIN


async def test_closed_port_is_chain_error_not_unknown_outcome() -> None:
    chain = JobcoinAdapter(f"http://127.0.0.1:{_closed_port()}/api", POOL, address_secret=SECRET)
    try:
        with pytest.raises(ChainError) as caught:
            await chain.broadcast(_send(COIN))
        assert not isinstance(caught.value, SendOutcomeUnknown)
        assert not isinstance(caught.value, BroadcastRejected)
        with pytest.raises(ChainError):
            await chain.balance(POOL)
        with pytest.raises(ChainError):
            await chain.check_send(_send(COIN), earlier_sends=0)
    finally:
        await chain.aclose()


async def test_broadcast_many_uses_the_batch_route(adapter: JobcoinAdapter, engine: AsyncEngine) -> None:
    await ledger.mint(engine, POOL, 10 * COIN)
    batch = [
        await adapter.prepare_send(
            from_address=POOL, from_key_index=None, to_address=f"r{i}", amount=(i + 1) * COIN, fee=NO_FEE, nonce=None
        )
        for i in range(5)
    ]  # 1 + 2 + 3 + 4 = 10: the fifth (5) cannot be paid
    results = await adapter.broadcast_many(batch)
    assert results[:4] == [None] * 4
    assert isinstance(results[4], BroadcastRejected)
    assert [await adapter.balance(f"r{i}") for i in range(5)] == [COIN, 2 * COIN, 3 * COIN, 4 * COIN, 0]


async def test_broadcast_many_falls_back_to_one_request_each() -> None:
    """The original API has no batch route: 404, then one POST per send."""
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if request.url.path.endswith("/batch"):
            return httpx.Response(404)
        return httpx.Response(200, json={"status": "OK"})

    chain = _mocked(httpx.MockTransport(handler))
    sends = [PreparedSend(POOL, f"r{i}", COIN, 0, None, None, None) for i in range(2)]
    assert await chain.broadcast_many(sends) == [None, None]
    assert await chain.broadcast_many(sends) == [None, None]
    assert asked == ["/api/transactions/batch"] + ["/api/transactions"] * 4


async def test_broadcast_many_timeout_is_unknown_for_every_send() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    chain = _mocked(httpx.MockTransport(handler))
    sends = [PreparedSend(POOL, f"r{i}", COIN, 0, None, None, None) for i in range(3)]
    results = await chain.broadcast_many(sends)
    assert all(isinstance(r, SendOutcomeUnknown) for r in results)
