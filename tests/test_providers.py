"""History sources over public provider APIs, replaying recorded replies.

No network: every reply comes from ``tests/data/providers/*.json`` (shapes and field names of
blockchain.info's ``rawaddr``/``multiaddr`` and Esplora's ``/address/:a/txs[/chain/:txid]``)
served by ``httpx.MockTransport`` to a real ``httpx.AsyncClient``. Waiting (rate limit,
``Retry-After``, backoff) runs on a fake clock, so the tests take no wall time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from mixhouse.errors import ChainError, InvalidAddress
from mixhouse.wallets.providers import BlockchainInfoSource, EsploraSource, RateLimiter
from mixhouse.wallets.providers.ratelimit import retry_after_seconds, satoshi
from mixhouse.wallets.records import Direction, HistoryPage, HistorySource

DATA = Path(__file__).parent / "data" / "providers"
BCI = "https://blockchain.info"
ESPLORA = "https://blockstream.info/api"


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text(), parse_float=Decimal)


def raw(name: str) -> bytes:
    return (DATA / name).read_bytes()


# -- replay -------------------------------------------------------------------------------

Reply = httpx.Response | Callable[[httpx.Request], httpx.Response]


class Replay:
    """A transport answering recorded replies by path and query, in order per route."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, frozenset[tuple[str, str]]], list[Reply]] = {}
        self.requests: list[httpx.Request] = []

    def on(self, path: str, *replies: Reply, **params: str | int) -> None:
        key = (path, frozenset((k, str(v)) for k, v in params.items()))
        self.routes.setdefault(key, []).extend(replies)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.url.path, frozenset(request.url.params.items()))
        queue = self.routes.get(key)
        if not queue:
            raise AssertionError(f"no recorded reply for {request.url}")
        reply = queue.pop(0) if len(queue) > 1 else queue[0]
        return reply(request) if callable(reply) else reply

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler))

    def paths(self) -> list[str]:
        return [r.url.path + (f"?{r.url.params['offset']}" if "offset" in r.url.params else "") for r in self.requests]


def ok(body: bytes) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"content-type": "application/json"})


class FakeClock:
    """Monotonic time that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def limiter(clock: FakeClock, **kwargs: Any) -> RateLimiter:
    settings: dict[str, Any] = {"rate": 10.0, "burst": 10, "max_retries": 3}
    settings.update(kwargs)
    return RateLimiter(clock=clock, sleep=clock.sleep, jitter=lambda: 0.5, **settings)


async def walk(
    source: BlockchainInfoSource | EsploraSource, addresses: list[str], checkpoint: str | None = None
) -> list[HistoryPage]:
    pages = []
    while True:
        page = await source.fetch(addresses, checkpoint)
        pages.append(page)
        checkpoint = page.checkpoint
        if page.done:
            return pages
        assert len(pages) < 50, "the source never finished"


# -- blockchain.info: rawaddr -------------------------------------------------------------

RAW_PAGES = [f"blockchain_info_rawaddr_offset{n}.json" for n in (0, 50, 100)]
RAW_ADDRESS = load(RAW_PAGES[0])["address"]


def rawaddr_replay() -> Replay:
    replay = Replay()
    for offset, name in zip((0, 50, 100), RAW_PAGES, strict=True):
        replay.on(f"/rawaddr/{RAW_ADDRESS}", ok(raw(name)), limit=50, offset=offset)
    return replay


def recorded_raw_txs() -> list[dict[str, Any]]:
    return [tx for name in RAW_PAGES for tx in load(name)["txs"]]


async def test_rawaddr_paginates_120_txs_in_pages_of_50_50_20() -> None:
    replay, clock = rawaddr_replay(), FakeClock()
    async with replay.client() as client:
        source = BlockchainInfoSource(BCI, client=client, limiter=limiter(clock))
        pages = await walk(source, [RAW_ADDRESS])

    assert [len(p.txs) for p in pages] == [50, 50, 20]
    assert [p.done for p in pages] == [False, False, True]
    assert replay.paths() == [f"/rawaddr/{RAW_ADDRESS}?{n}" for n in (0, 50, 100)]
    assert all(r.url.params["limit"] == "50" for r in replay.requests)
    rows = [tx for page in pages for tx in page.txs]
    recorded = {tx["hash"]: tx for tx in recorded_raw_txs()}
    assert len(rows) == 120
    assert {r.txid for r in rows} == set(recorded)  # every transaction exactly once
    head = load(RAW_PAGES[0])
    assert sum(r.net for r in rows) == head["final_balance"] == head["total_received"] - head["total_sent"]
    for row in rows:
        tx = recorded[row.txid]
        assert (row.chain, row.address, row.asset) == ("BTC", RAW_ADDRESS, "BTC")
        assert row.net == tx["result"]
        # The legs are complete on rawaddr: the net is the legs' sum too.
        mine_out = sum(leg.amount for leg in row.outputs if leg.address == RAW_ADDRESS)
        mine_in = sum(leg.amount for leg in row.inputs if leg.address == RAW_ADDRESS)
        assert row.net == mine_out - mine_in
        assert row.fee == tx["fee"] == sum(leg.amount for leg in row.inputs) - sum(leg.amount for leg in row.outputs)
        assert [leg.index for leg in row.outputs] == [o["n"] for o in tx["out"]]
        assert all(isinstance(leg.amount, int) for leg in row.inputs + row.outputs)
        assert row.direction is (Direction.OUT if mine_in else Direction.IN)
        assert row.block_hash is None
        if tx["block_height"] is None:
            assert row.block_height is None
            assert row.block_time is None
        else:
            assert row.block_height == tx["block_height"]
            assert row.block_time == datetime.fromtimestamp(tx["time"], UTC)
    assert sum(1 for r in rows if r.block_height is None) == 1
    assert json.loads(pages[-1].checkpoint or "") == {"n_tx": 120, "pending": 1}


async def test_rawaddr_resumes_from_a_checkpoint_in_a_new_source() -> None:
    replay, clock = rawaddr_replay(), FakeClock()
    async with replay.client() as client:
        first = await BlockchainInfoSource(BCI, client=client, limiter=limiter(clock)).fetch([RAW_ADDRESS], None)
    assert not first.done
    assert json.loads(first.checkpoint or "")["offset"] == 50

    # A restart: a new source (and client) continues where the stored checkpoint says.
    async with replay.client() as client:
        second = await BlockchainInfoSource(BCI, client=client, limiter=limiter(clock)).fetch(
            [RAW_ADDRESS], first.checkpoint
        )
    assert replay.paths() == [f"/rawaddr/{RAW_ADDRESS}?0", f"/rawaddr/{RAW_ADDRESS}?50"]
    assert [t.txid for t in second.txs] == [tx["hash"] for tx in load(RAW_PAGES[1])["txs"]]
    assert not second.done
    assert json.loads(second.checkpoint or "")["offset"] == 100


async def test_rawaddr_later_sync_reads_only_new_and_pending_transactions() -> None:
    replay, clock = rawaddr_replay(), FakeClock()
    async with replay.client() as client:
        source = BlockchainInfoSource(BCI, client=client, limiter=limiter(clock))
        finished = (await walk(source, [RAW_ADDRESS]))[-1].checkpoint

        # Two new transactions arrived; the head of the list grew and n_tx with it.
        newer = load(RAW_PAGES[0])
        fresh = []
        for i in range(2):
            tx = json.loads(json.dumps(newer["txs"][3], default=str), parse_float=Decimal)
            tx["hash"] = f"{i + 1:02x}" + tx["hash"][2:]
            fresh.append(tx)
        newer["n_tx"] = 122
        newer["txs"] = (fresh + newer["txs"])[:50]
        later = Replay()
        later.on(f"/rawaddr/{RAW_ADDRESS}", ok(json.dumps(newer, default=int).encode()), limit=50, offset=0)
        async with later.client() as client2:
            page = await BlockchainInfoSource(BCI, client=client2, limiter=limiter(clock)).fetch(
                [RAW_ADDRESS], finished
            )
    assert len(later.requests) == 1  # 2 new + 1 pending fit in the first page
    assert page.done
    assert {t.txid for t in page.txs} >= {tx["hash"] for tx in fresh}
    assert json.loads(page.checkpoint or "") == {"n_tx": 122, "pending": 1}


async def test_rawaddr_rejects_an_invalid_address_before_any_request() -> None:
    replay = Replay()
    async with replay.client() as client:
        source = BlockchainInfoSource(BCI, client=client, limiter=limiter(FakeClock()))
        with pytest.raises(InvalidAddress):
            await source.fetch(["bc1qnotanaddress"], None)
        with pytest.raises(InvalidAddress):  # testnet address on a mainnet provider
            await source.fetch(["tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"], None)
    assert replay.requests == []


# -- blockchain.info: multiaddr -----------------------------------------------------------

MULTI = load("blockchain_info_multiaddr.json")
ADDR_B, ADDR_C = (a["address"] for a in MULTI["addresses"])


async def test_multiaddr_gives_one_row_per_address_and_only_the_legs_it_has() -> None:
    replay, clock = Replay(), FakeClock()
    replay.on("/multiaddr", ok(raw("blockchain_info_multiaddr.json")), active=f"{ADDR_B}|{ADDR_C}", n=50, offset=0)
    async with replay.client() as client:
        page = await BlockchainInfoSource(BCI, client=client, limiter=limiter(clock)).fetch([ADDR_B, ADDR_C], None)

    assert page.done
    assert len(replay.requests) == 1
    recorded = {tx["hash"]: tx for tx in MULTI["txs"]}
    rows = {(r.txid, r.address): r for r in page.txs}
    assert len(rows) == len(page.txs) == 5  # 4 transactions, one of them touching both
    both = next(tx for tx in MULTI["txs"] if tx["vout_sz"] == 3)["hash"]
    assert {a for (t, a) in rows if t == both} == {ADDR_B, ADDR_C}

    for (txid, _address), row in rows.items():
        tx = recorded[txid]
        # Nothing invented: exactly the outputs the reply lists, although vout_sz says more.
        assert [(leg.index, leg.address, leg.amount) for leg in row.outputs] == [
            (o["n"], o["addr"], o["value"]) for o in tx["out"]
        ]
        assert len(row.outputs) < tx["vout_sz"]
        assert row.extra["partial_outputs"] == "true"
        assert [(leg.address, leg.amount) for leg in row.inputs] == [
            (i["prev_out"]["addr"], i["prev_out"]["value"]) for i in tx["inputs"]
        ]
        assert row.fee == tx["fee"]
        if txid != both:
            assert row.net == tx["result"]

    # The transaction between the two: each address gets its own effect (the reply's
    # "result" is the set's, -410600, and is not used for either).
    assert rows[(both, ADDR_B)].net == 489_400 - 1_500_000
    assert rows[(both, ADDR_C)].net == 600_000
    assert rows[(both, ADDR_B)].direction is Direction.OUT
    assert rows[(both, ADDR_C)].direction is Direction.IN
    net_b = sum(r.net for r in page.txs if r.address == ADDR_B)
    net_c = sum(r.net for r in page.txs if r.address == ADDR_C)
    assert (net_b, net_c) == (MULTI["addresses"][0]["final_balance"], MULTI["addresses"][1]["final_balance"])
    unconfirmed = [r for r in page.txs if r.block_height is None]
    assert len(unconfirmed) == 1
    assert unconfirmed[0].address == ADDR_C
    assert unconfirmed[0].block_time is None


async def test_multiaddr_pages_with_offset() -> None:
    first = load("blockchain_info_multiaddr.json")
    first["wallet"]["n_tx"] = 6
    second = dict(first, txs=first["txs"][:2])
    replay, clock = Replay(), FakeClock()
    active = f"{ADDR_B}|{ADDR_C}"
    replay.on("/multiaddr", ok(json.dumps(first, default=float).encode()), active=active, n=4, offset=0)
    replay.on("/multiaddr", ok(json.dumps(second, default=float).encode()), active=active, n=4, offset=4)
    async with replay.client() as client:
        source = BlockchainInfoSource(BCI, client=client, limiter=limiter(clock), page_size=4)
        pages = await walk(source, [ADDR_B, ADDR_C])
    assert [p.done for p in pages] == [False, True]
    assert [len(p.txs) for p in pages] == [5, 2]


# -- Esplora ------------------------------------------------------------------------------

ESPLORA_ADDRESS = load("esplora_address.json")["address"]
ESPLORA_PAGES = ["esplora_txs.json", "esplora_chain_page2.json", "esplora_chain_page3.json"]


def last_confirmed(name: str) -> str:
    return str([tx for tx in load(name) if tx["status"]["confirmed"]][-1]["txid"])


def esplora_replay(*, first_replies: tuple[Reply, ...] = ()) -> Replay:
    replay = Replay()
    base = f"/api/address/{ESPLORA_ADDRESS}/txs"
    replay.on(base, *first_replies, ok(raw(ESPLORA_PAGES[0])))
    replay.on(f"{base}/chain/{last_confirmed(ESPLORA_PAGES[0])}", ok(raw(ESPLORA_PAGES[1])))
    replay.on(f"{base}/chain/{last_confirmed(ESPLORA_PAGES[1])}", ok(raw(ESPLORA_PAGES[2])))
    return replay


async def test_esplora_chains_pages_by_last_seen_txid() -> None:
    replay, clock = esplora_replay(), FakeClock()
    async with replay.client() as client:
        pages = await walk(EsploraSource(ESPLORA, client=client, limiter=limiter(clock)), [ESPLORA_ADDRESS])

    assert [len(p.txs) for p in pages] == [3 + 25, 25, 10]
    assert [p.done for p in pages] == [False, False, True]
    base = f"/api/address/{ESPLORA_ADDRESS}/txs"
    assert [r.url.path for r in replay.requests] == [
        base,
        f"{base}/chain/{last_confirmed(ESPLORA_PAGES[0])}",
        f"{base}/chain/{last_confirmed(ESPLORA_PAGES[1])}",
    ]
    rows = [tx for p in pages for tx in p.txs]
    recorded = {tx["txid"]: tx for name in ESPLORA_PAGES for tx in load(name)}
    assert len(rows) == 63
    assert {r.txid for r in rows} == set(recorded)
    assert sum(1 for r in rows if r.block_height is None) == 3
    stats = load("esplora_address.json")
    chain, mempool = stats["chain_stats"], stats["mempool_stats"]
    balance = chain["funded_txo_sum"] - chain["spent_txo_sum"] + mempool["funded_txo_sum"] - mempool["spent_txo_sum"]
    assert sum(r.net for r in rows) == balance
    for row in rows:
        tx = recorded[row.txid]
        assert row.fee == tx["fee"]
        assert [leg.amount for leg in row.outputs] == [o["value"] for o in tx["vout"]]
        assert [leg.address for leg in row.inputs] == [v["prevout"]["scriptpubkey_address"] for v in tx["vin"]]
        status = tx["status"]
        if status["confirmed"]:
            assert (row.block_height, row.block_hash) == (status["block_height"], status["block_hash"])
            assert row.block_time == datetime.fromtimestamp(status["block_time"], UTC)
        else:
            assert (row.block_height, row.block_hash, row.block_time) == (None, None, None)
    spends = [r for r in rows if r.direction is not Direction.IN]
    assert spends
    assert all(r.net < 0 for r in spends)


async def test_esplora_resumes_in_a_new_source_and_iterates_addresses() -> None:
    other = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
    replay, clock = esplora_replay(), FakeClock()
    replay.on(f"/api/address/{other}/txs", ok(b"[]"))
    async with replay.client() as client:
        first = await EsploraSource(ESPLORA, client=client, limiter=limiter(clock)).fetch(
            [ESPLORA_ADDRESS, other], None
        )
    cursor = json.loads(first.checkpoint or "")
    assert cursor["address"] == ESPLORA_ADDRESS
    assert cursor["last_seen"] == last_confirmed(ESPLORA_PAGES[0])

    async with replay.client() as client:
        source = EsploraSource(ESPLORA, client=client, limiter=limiter(clock))
        second = await source.fetch([ESPLORA_ADDRESS, other], first.checkpoint)
        assert [t.txid for t in second.txs] == [tx["txid"] for tx in load(ESPLORA_PAGES[1])]
        rest = await walk(source, [ESPLORA_ADDRESS, other], second.checkpoint)
    # The first address ends on its short page, then the (empty) second address is read.
    assert [len(p.txs) for p in rest] == [10, 0]
    assert [p.done for p in rest] == [False, True]
    assert replay.requests[-1].url.path == f"/api/address/{other}/txs"
    newest_confirmed = next(tx for tx in load(ESPLORA_PAGES[0]) if tx["status"]["confirmed"])["txid"]
    assert json.loads(rest[-1].checkpoint or "")["known"] == {ESPLORA_ADDRESS: newest_confirmed}

    # A later sync reads the first page again and stops at the newest transaction it knew:
    # only the mempool transactions (re-read until they confirm) come back.
    async with replay.client() as client:
        source = EsploraSource(ESPLORA, client=client, limiter=limiter(clock))
        again = await walk(source, [ESPLORA_ADDRESS, other], rest[-1].checkpoint)
    assert [len(p.txs) for p in again] == [3, 0]
    assert all(t.block_height is None for t in again[0].txs)


async def test_esplora_dedupes_a_transaction_listed_twice_keeping_the_confirmed_copy() -> None:
    replay, clock = Replay(), FakeClock()
    replay.on(f"/api/address/{ESPLORA_ADDRESS}/txs", ok(raw("esplora_duplicate.json")))
    async with replay.client() as client:
        page = await EsploraSource(ESPLORA, client=client, limiter=limiter(clock)).fetch([ESPLORA_ADDRESS], None)
    recorded = load("esplora_duplicate.json")
    assert recorded[0]["txid"] == recorded[1]["txid"]
    assert len(page.txs) == 2
    assert page.done
    row = next(t for t in page.txs if t.txid == recorded[0]["txid"])
    assert row.block_height == recorded[1]["status"]["block_height"]
    assert len(row.outputs) == len(recorded[1]["vout"])


# -- failures -----------------------------------------------------------------------------


async def test_a_429_mid_walk_waits_retry_after_and_completes() -> None:
    replay, clock = Replay(), FakeClock()
    too_many = httpx.Response(429, headers={"Retry-After": "1"}, text="Too Many Requests")
    for offset, name in zip((0, 50, 100), RAW_PAGES, strict=True):
        replies: tuple[Reply, ...] = (too_many,) if offset == 50 else ()
        replay.on(f"/rawaddr/{RAW_ADDRESS}", *replies, ok(raw(name)), limit=50, offset=offset)
    async with replay.client() as client:
        pages = await walk(BlockchainInfoSource(BCI, client=client, limiter=limiter(clock)), [RAW_ADDRESS])
    assert replay.paths() == [f"/rawaddr/{RAW_ADDRESS}?{n}" for n in (0, 50, 50, 100)]
    assert clock.sleeps == [1.0]  # exactly the provider's Retry-After, on the fake clock
    rows = [t for p in pages for t in p.txs]
    assert len(rows) == 120
    assert {t.txid for t in rows} == {tx["hash"] for tx in recorded_raw_txs()}


async def test_a_429_on_esplora_is_retried_with_backoff_when_no_retry_after() -> None:
    clock = FakeClock()
    replay = esplora_replay(first_replies=(httpx.Response(429), httpx.Response(429)))
    async with replay.client() as client:
        pages = await walk(EsploraSource(ESPLORA, client=client, limiter=limiter(clock)), [ESPLORA_ADDRESS])
    assert sum(len(p.txs) for p in pages) == 63
    assert clock.sleeps == [0.75, 1.5]  # base 1 s, doubled, "equal jitter" at 0.5


async def test_repeated_429s_beyond_the_limit_raise_rate_limited() -> None:
    replay, clock = Replay(), FakeClock()
    replay.on(f"/rawaddr/{RAW_ADDRESS}", httpx.Response(429, headers={"Retry-After": "2"}), limit=50, offset=0)
    async with replay.client() as client:
        source = BlockchainInfoSource(BCI, client=client, limiter=limiter(clock, max_retries=3))
        with pytest.raises(ChainError, match="rate limited"):
            await source.fetch([RAW_ADDRESS], None)
    assert len(replay.requests) == 4
    assert clock.sleeps == [2.0, 2.0, 2.0]


async def test_a_retry_after_too_long_fails_at_once() -> None:
    replay, clock = Replay(), FakeClock()
    replay.on(f"/rawaddr/{RAW_ADDRESS}", httpx.Response(429, headers={"Retry-After": "3600"}), limit=50, offset=0)
    async with replay.client() as client:
        source = BlockchainInfoSource(BCI, client=client, limiter=limiter(clock, max_retry_after=120))
        with pytest.raises(ChainError, match="rate limited"):
            await source.fetch([RAW_ADDRESS], None)
    assert len(replay.requests) == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_5xx_raises_chain_error_after_retries(status: int) -> None:
    replay, clock = Replay(), FakeClock()
    replay.on(f"/api/address/{ESPLORA_ADDRESS}/txs", httpx.Response(status, text="upstream down"))
    async with replay.client() as client:
        source = EsploraSource(ESPLORA, client=client, limiter=limiter(clock, max_retries=3))
        with pytest.raises(ChainError, match=f"HTTP {status} after 4 attempts"):
            await source.fetch([ESPLORA_ADDRESS], None)
    assert len(replay.requests) == 4
    assert clock.sleeps == [0.75, 1.5, 3.0]


async def test_a_5xx_then_success_recovers() -> None:
    clock = FakeClock()
    replay = esplora_replay(first_replies=(httpx.Response(503),))
    async with replay.client() as client:
        pages = await walk(EsploraSource(ESPLORA, client=client, limiter=limiter(clock)), [ESPLORA_ADDRESS])
    assert sum(len(p.txs) for p in pages) == 63


async def test_a_transport_failure_is_retried_then_chain_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    replay, clock = Replay(), FakeClock()
    replay.on(f"/rawaddr/{RAW_ADDRESS}", refuse, limit=50, offset=0)
    async with replay.client() as client:
        source = BlockchainInfoSource(BCI, client=client, limiter=limiter(clock, max_retries=2))
        with pytest.raises(ChainError, match="ConnectError"):
            await source.fetch([RAW_ADDRESS], None)
    assert len(replay.requests) == 3


async def test_a_4xx_is_not_retried() -> None:
    replay, clock = Replay(), FakeClock()
    replay.on(f"/api/address/{ESPLORA_ADDRESS}/txs", httpx.Response(400, text="Invalid Bitcoin address"))
    async with replay.client() as client:
        source = EsploraSource(ESPLORA, client=client, limiter=limiter(clock))
        with pytest.raises(ChainError, match="HTTP 400: Invalid Bitcoin address"):
            await source.fetch([ESPLORA_ADDRESS], None)
    assert len(replay.requests) == 1


@pytest.mark.parametrize("body", [b'{"address": "1A", "n_tx": 3, "txs": [', b"<html>502 Bad Gateway</html>", b""])
async def test_malformed_json_is_a_chain_error(body: bytes) -> None:
    replay, clock = Replay(), FakeClock()
    replay.on(f"/rawaddr/{RAW_ADDRESS}", ok(body), limit=50, offset=0)
    replay.on(f"/api/address/{ESPLORA_ADDRESS}/txs", ok(body))
    async with replay.client() as client:
        with pytest.raises(ChainError, match="not JSON"):
            await BlockchainInfoSource(BCI, client=client, limiter=limiter(clock)).fetch([RAW_ADDRESS], None)
        with pytest.raises(ChainError, match="not JSON"):
            await EsploraSource(ESPLORA, client=client, limiter=limiter(clock)).fetch([ESPLORA_ADDRESS], None)


async def test_a_wrong_shape_is_a_chain_error() -> None:
    replay, clock = Replay(), FakeClock()
    replay.on(f"/rawaddr/{RAW_ADDRESS}", ok(b'{"n_tx": 1, "txs": {"hash": "x"}}'), limit=50, offset=0)
    replay.on(f"/api/address/{ESPLORA_ADDRESS}/txs", ok(b'{"error": "nope"}'))
    async with replay.client() as client:
        with pytest.raises(ChainError, match="txs is not a list"):
            await BlockchainInfoSource(BCI, client=client, limiter=limiter(clock)).fetch([RAW_ADDRESS], None)
        with pytest.raises(ChainError, match="expected a list"):
            await EsploraSource(ESPLORA, client=client, limiter=limiter(clock)).fetch([ESPLORA_ADDRESS], None)


async def test_a_float_amount_is_refused_on_blockchain_info() -> None:
    assert b".5," in raw("blockchain_info_rawaddr_float_value.json")
    replay, clock = Replay(), FakeClock()
    replay.on(f"/rawaddr/{RAW_ADDRESS}", ok(raw("blockchain_info_rawaddr_float_value.json")), limit=50, offset=0)
    async with replay.client() as client:
        with pytest.raises(ChainError, match="integer amount of satoshi"):
            await BlockchainInfoSource(BCI, client=client, limiter=limiter(clock)).fetch([RAW_ADDRESS], None)


async def test_a_float_amount_is_refused_on_esplora() -> None:
    replay, clock = Replay(), FakeClock()
    replay.on(f"/api/address/{ESPLORA_ADDRESS}/txs", ok(raw("esplora_float_value.json")))
    async with replay.client() as client:
        with pytest.raises(ChainError, match="integer amount of satoshi"):
            await EsploraSource(ESPLORA, client=client, limiter=limiter(clock)).fetch([ESPLORA_ADDRESS], None)


@pytest.mark.parametrize("value", [Decimal("1.5"), Decimal("1E+3"), "1000", True, None, -1, 21_000_000 * 10**8 + 1])
def test_satoshi_accepts_only_json_integers_in_range(value: object) -> None:
    with pytest.raises(ChainError):
        satoshi(value, "test")


def test_satoshi_accepts_integers() -> None:
    assert satoshi(0, "t") == 0
    assert satoshi(21_000_000 * 10**8, "t") == 21_000_000 * 10**8


@pytest.mark.parametrize(
    "checkpoint", ["not json", "[1]", '{"n_tx": -1}', '{"offset": "50", "n_tx": 1}', '{"pending": 1}']
)
async def test_an_unreadable_checkpoint_is_a_chain_error(checkpoint: str) -> None:
    async with Replay().client() as client:
        source = BlockchainInfoSource(BCI, client=client, limiter=limiter(FakeClock()))
        with pytest.raises(ChainError, match="checkpoint"):
            await source.fetch([RAW_ADDRESS], checkpoint)


# -- the rate limiter ---------------------------------------------------------------------


async def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    bucket = RateLimiter(2.0, burst=3, clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(3):
        await bucket.acquire()
    assert clock.now == start
    assert clock.sleeps == []
    await bucket.acquire()
    await bucket.acquire()
    assert clock.sleeps == [0.5, 0.5]
    assert clock.now == start + 1.0

    clock.now += 100.0  # a long quiet period refills the bucket, but only up to the burst
    for _ in range(3):
        await bucket.acquire()
    assert clock.sleeps == [0.5, 0.5]
    await bucket.acquire()
    assert clock.sleeps == [0.5, 0.5, 0.5]


async def test_token_bucket_is_shared_by_concurrent_requests() -> None:
    clock = FakeClock()
    bucket = RateLimiter(4.0, burst=1, clock=clock, sleep=clock.sleep)
    times: list[float] = []

    async def one() -> None:
        await bucket.acquire()
        times.append(clock.now)

    await asyncio.gather(*(one() for _ in range(5)))
    assert times == [pytest.approx(1000.0 + 0.25 * i) for i in range(5)]


async def test_a_pause_holds_every_request() -> None:
    clock = FakeClock()
    bucket = RateLimiter(100.0, burst=10, clock=clock, sleep=clock.sleep)
    bucket.pause(5.0)
    await bucket.acquire()
    assert clock.sleeps == [5.0]
    bucket.pause(1.0)
    bucket.pause(0.5)  # a shorter pause does not shorten the longer one
    await bucket.acquire()
    assert clock.sleeps == [5.0, 1.0]


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    low = RateLimiter(1.0, base_delay=1.0, max_delay=8.0, jitter=lambda: 0.0)
    high = RateLimiter(1.0, base_delay=1.0, max_delay=8.0, jitter=lambda: 0.999999)
    assert [low.backoff(n) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert [round(high.backoff(n), 3) for n in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_retry_after_seconds_and_http_dates() -> None:
    now = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
    later = (now + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry_after_seconds(httpx.Headers({"Retry-After": "7"}), now) == 7.0
    assert retry_after_seconds(httpx.Headers({"Retry-After": later}), now) == 30.0
    assert retry_after_seconds(httpx.Headers({"Retry-After": "Sat, 01 Jun 2024 11:00:00 GMT"}), now) == 0.0
    assert retry_after_seconds(httpx.Headers({"Retry-After": "soon"}), now) is None
    assert retry_after_seconds(httpx.Headers({}), now) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0.0},
        {"rate": -1.0},
        {"rate": float("inf")},
        {"rate": 1.0, "burst": 0},
        {"rate": 1.0, "max_retries": -1},
    ],
)
def test_rate_limiter_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message differs per setting
        RateLimiter(**kwargs)


async def test_sources_satisfy_the_history_source_protocol() -> None:
    bci, esplora = BlockchainInfoSource(), EsploraSource(ESPLORA, network="testnet")
    sources: list[HistorySource] = [bci, esplora]
    assert all(s.chain == "BTC" for s in sources)
    with pytest.raises(InvalidAddress):  # a testnet server refuses mainnet addresses
        await esplora.fetch([ESPLORA_ADDRESS], None)
    await bci.aclose()
    await esplora.aclose()
