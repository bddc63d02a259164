"""Bad input to the Grenache transport: every malformed request gets an error frame, the server
stays up and the handler never sees it; malformed or hostile replies are PeerUnavailable."""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web

from mixhouse.otc.grenache import BadFrame, GrapeClient, GrapeError, GrenachePeer, PeerUnavailable
from mixhouse.otc.grenache.frames import (
    decode_json,
    gunzip_limited,
    parse_reply,
    parse_request,
    read_frame,
)
from mixhouse.otc.grenache.server import RpcServer
from tests.fixtures.grapes import Grapes

MAX_BODY = 64 * 1024


class Recorder:
    """A handler that records what reached it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def __call__(self, key: str, payload: Any) -> Any:
        self.calls.append((key, payload))
        if payload == "unserialisable":
            return {1, 2}  # a set: not JSON
        return {"ok": payload}


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[str, Recorder, httpx.AsyncClient]]:
    recorder = Recorder()
    server = RpcServer(recorder, host="127.0.0.1", port=0, max_body_bytes=MAX_BODY, max_json_depth=16)
    await server.start()
    async with httpx.AsyncClient(timeout=10.0) as client:
        try:
            yield f"http://127.0.0.1:{server.port}/", recorder, client
        finally:
            await server.close()


def _frame(response: httpx.Response, *, gzipped: bool = False) -> Any:
    body = gzip.decompress(response.content) if gzipped else response.content
    return json.loads(body)


GOOD = json.dumps(["rid-1", "svc", {"action": "ping", "args": []}]).encode()

BAD_BODIES: list[tuple[str, bytes, int, str]] = [
    ("not json", b"{nope", 400, "ERR_FRAME_JSON"),
    ("empty body", b"", 400, "ERR_FRAME_JSON"),
    ("not utf-8", b'["\xff\xfe", "k", 1]', 400, "ERR_FRAME_JSON"),
    ("NaN", b'["r", "k", NaN]', 400, "ERR_FRAME_JSON"),
    ("huge integer", b'["r", "k", ' + b"9" * 5000 + b"]", 400, "ERR_FRAME_JSON"),
    ("raw NUL", b'["r", "k", "a\x00b"]', 400, "ERR_FRAME_NUL"),
    ("escaped NUL", b'["r", "k", {"a\\u0000": 1}]', 400, "ERR_FRAME_NUL"),
    ("too deep", b'["r", "k", ' + b"[" * 40 + b"]" * 40 + b"]", 400, "ERR_FRAME_TOO_DEEP"),
    ("100k brackets", b"[" * 100_000, 413, "ERR_FRAME_TOO_LARGE"),
    ("deep under the size cap", b"[" * 60_000, 400, "ERR_FRAME_TOO_DEEP"),
    ("object frame", b'{"rid": "r", "key": "k"}', 400, "ERR_FRAME_SHAPE"),
    ("string frame", b'"hello"', 400, "ERR_FRAME_SHAPE"),
    ("two items", b'["r", "k"]', 400, "ERR_FRAME_SHAPE"),
    ("four items", b'["r", "k", 1, 2]', 400, "ERR_FRAME_SHAPE"),
    ("numeric rid", b'[1, "k", 1]', 400, "ERR_FRAME_SHAPE"),
    ("empty key", b'["r", "", 1]', 400, "ERR_FRAME_SHAPE"),
    ("object key", b'["r", {}, 1]', 400, "ERR_FRAME_SHAPE"),
    ("oversized", b'["r", "k", "' + b"x" * MAX_BODY + b'"]', 413, "ERR_FRAME_TOO_LARGE"),
]


@pytest.mark.parametrize(("name", "body", "status", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_bad_request_bodies_get_error_frames(
    served: tuple[str, Recorder, httpx.AsyncClient], name: str, body: bytes, status: int, code: str
) -> None:
    url, recorder, client = served
    for gzipped in (False, True):
        headers = {"grc-compress": "gzip" if gzipped else "none"}
        response = await client.post(url, content=gzip.compress(body) if gzipped else body, headers=headers)
        assert response.status_code == status, name
        frame = _frame(response, gzipped=gzipped)
        assert frame[1] == code
        assert frame[2] is None
    assert recorder.calls == []
    # Still serving, and a good request after the bad ones is answered.
    response = await client.post(url, content=GOOD)
    assert _frame(response) == ["rid-1", None, {"ok": {"action": "ping", "args": []}}]


async def test_error_frames_keep_a_readable_rid(served: tuple[str, Recorder, httpx.AsyncClient]) -> None:
    url, _recorder, client = served
    response = await client.post(url, content=b'["my-rid", "", 1]')
    assert _frame(response) == ["my-rid", "ERR_FRAME_SHAPE", None]


async def test_gzip_bomb_and_bad_gzip(served: tuple[str, Recorder, httpx.AsyncClient]) -> None:
    url, recorder, client = served
    headers = {"grc-compress": "gzip"}
    # 32 MiB once inflated, about 32 KiB on the wire: under the raw cap, stopped while inflating.
    bomb = gzip.compress(b'["r", "k", "' + b"0" * (32 << 20) + b'"]')
    assert len(bomb) < MAX_BODY
    response = await client.post(url, content=bomb, headers=headers)
    assert response.status_code == 413
    assert _frame(response, gzipped=True)[1] == "ERR_FRAME_TOO_LARGE"
    for body in (b"not gzip at all", gzip.compress(GOOD)[:-6], gzip.compress(GOOD) + b"trailing"):
        response = await client.post(url, content=body, headers=headers)
        assert response.status_code == 400
        assert _frame(response, gzipped=True)[1] == "ERR_FRAME_GZIP"
    assert recorder.calls == []
    # gzip is honoured when it is asked for, and the reply is gzipped back.
    response = await client.post(url, content=gzip.compress(GOOD), headers=headers)
    assert _frame(response, gzipped=True)[0] == "rid-1"


async def test_oversized_content_length_and_chunked_bodies(served: tuple[str, Recorder, httpx.AsyncClient]) -> None:
    url, recorder, client = served

    async def chunks() -> AsyncIterator[bytes]:
        yield b'["r", "k", "'
        for _ in range(100):
            yield b"x" * 4096
        yield b'"]'

    response = await client.post(url, content=chunks())  # chunked: no Content-Length
    assert response.status_code == 413
    assert _frame(response)[1] == "ERR_FRAME_TOO_LARGE"
    response = await client.post(url, content=b"x" * (MAX_BODY + 1))
    assert response.status_code == 413
    assert recorder.calls == []


async def test_methods_other_than_post(served: tuple[str, Recorder, httpx.AsyncClient]) -> None:
    url, recorder, client = served
    for method in ("GET", "PUT", "DELETE"):
        response = await client.request(method, url)
        assert response.status_code == 405
        assert _frame(response) == [None, "ERR_FRAME_METHOD", None]
    assert recorder.calls == []


async def test_unserialisable_reply_is_an_error_frame(served: tuple[str, Recorder, httpx.AsyncClient]) -> None:
    url, _recorder, client = served
    response = await client.post(url, content=b'["r", "k", "unserialisable"]')
    assert _frame(response) == ["r", "ERR_REPLY_ENCODING", None]


# -- the frames module on its own -------------------------------------------------------------


def test_gunzip_limited_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (8 << 20))
    with pytest.raises(BadFrame) as too_large:
        gunzip_limited(bomb, 1 << 20)
    assert too_large.value.status == 413
    assert gunzip_limited(gzip.compress(b"abc"), 3) == b"abc"
    raw_deflate = zlib.compress(b"abc")  # zlib, not gzip framing
    with pytest.raises(BadFrame, match="ERR_FRAME_GZIP"):
        gunzip_limited(raw_deflate, 100)


def test_read_frame_checks_the_raw_size_first() -> None:
    with pytest.raises(BadFrame) as exc:
        read_frame(b"[" + b"1," * 100 + b"1]", compressed=False, max_body_bytes=50, max_depth=4)
    assert exc.value.status == 413
    assert read_frame(b"[1]", compressed=False, max_body_bytes=50, max_depth=4) == [1]


def test_decode_json_depth_counts_only_real_brackets() -> None:
    # Brackets inside strings do not nest.
    assert decode_json(b'["[[[[[[[[[[", {"{{{{": "]]]]"}]', max_depth=2) == ["[[[[[[[[[[", {"{{{{": "]]]]"}]
    with pytest.raises(BadFrame, match="TOO_DEEP"):
        decode_json(b"[[[1]]]", max_depth=2)


def test_parse_request_and_reply_shapes() -> None:
    assert parse_request(["r", "k", None]) == ("r", "k", None)
    assert parse_reply(["r", None, {"a": 1}], "r") == (None, {"a": 1})
    assert parse_reply([None, "ERR_FRAME_JSON", None], "r") == ("ERR_FRAME_JSON", None)
    for bad in (["other", None, 1], [None, None, 1], ["r", 5, None], ["r", None], {"r": 1}, "r"):
        with pytest.raises(BadFrame):
            parse_reply(bad, "r")


# -- hostile or broken peers answering our requests --------------------------------------------

Reply = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


async def _evil_server(reply: Reply) -> tuple[web.ServerRunner, int]:
    runner = web.ServerRunner(web.Server(reply, access_log=None))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = runner.addresses[0][1]
    return runner, port


async def _rid(request: web.BaseRequest) -> str:
    body = await request.read()
    if request.headers.get("grc-compress") == "gzip":
        body = gzip.decompress(body)
    rid: str = json.loads(body)[0]
    return rid


async def _wrong_rid(request: web.BaseRequest) -> web.StreamResponse:
    await request.read()
    return web.Response(body=json.dumps([str(uuid.uuid4()), None, "not yours"]).encode())


async def _not_json(request: web.BaseRequest) -> web.StreamResponse:
    await request.read()
    return web.Response(body=b"<html>proxy error</html>")


async def _huge(request: web.BaseRequest) -> web.StreamResponse:
    rid = await _rid(request)
    return web.Response(body=json.dumps([rid, None, "x" * (2 * MAX_BODY)]).encode())


async def _bomb(request: web.BaseRequest) -> web.StreamResponse:
    rid = await _rid(request)
    return web.Response(body=gzip.compress(json.dumps([rid, None, "0" * (16 << 20)]).encode()))


async def _ok(request: web.BaseRequest) -> web.StreamResponse:
    rid = await _rid(request)
    return web.Response(body=json.dumps([rid, None, "fine"]).encode())


@pytest.mark.parametrize(
    ("reply", "compress"), [(_wrong_rid, False), (_not_json, False), (_huge, False), (_bomb, True)]
)
async def test_hostile_replies_are_peer_unavailable(grapes: Grapes, reply: Reply, compress: bool) -> None:
    runner, port = await _evil_server(reply)
    good_runner, good_port = await _evil_server(_ok)
    try:
        peer = GrenachePeer(
            grape_url=grapes.urls[0], service=f"test:{uuid.uuid4().hex}", handler=Recorder(), max_body_bytes=MAX_BODY
        )
        async with peer:
            with pytest.raises(PeerUnavailable):
                await peer.request(f"127.0.0.1:{port}", "hi", compress=compress)
            assert f"127.0.0.1:{port}" in peer.suspected()
            # The same peer object still talks to a sane server.
            assert await peer.request(f"127.0.0.1:{good_port}", "hi") == "fine"
    finally:
        await runner.cleanup()
        await good_runner.cleanup()


async def test_grape_error_replies_are_grape_errors(grapes: Grapes) -> None:
    grape = GrapeClient(grapes.urls[0])
    try:
        with pytest.raises(GrapeError, match="ERR_GRAPE_LOOKUP"):
            await grape.lookup("")  # the grape answers a JSON string, HTTP 200
        with pytest.raises(GrapeError, match="413"):
            await grape.lookup("k" * 10_000)  # over the grape's 8192-byte body cap
        with pytest.raises(ValueError, match="port"):
            await grape.announce("k", 0)
        assert await grape.lookup(f"nobody:{uuid.uuid4().hex}") == []
    finally:
        await grape.aclose()


async def test_requests_beyond_max_in_flight_are_refused_busy() -> None:
    entered = asyncio.Semaphore(0)
    release = asyncio.Event()

    async def slow(key: str, payload: Any) -> Any:
        entered.release()
        await release.wait()
        return payload

    server = RpcServer(slow, host="127.0.0.1", port=0, max_body_bytes=MAX_BODY, max_json_depth=16, max_in_flight=2)
    await server.start()
    url = f"http://127.0.0.1:{server.port}/"
    try:
        async with httpx.AsyncClient(timeout=30.0) as client:
            held = [
                asyncio.create_task(client.post(url, content=json.dumps([f"r{i}", "k", i]).encode())) for i in (1, 2)
            ]
            await entered.acquire()
            await entered.acquire()
            busy = await client.post(url, content=GOOD)
            assert busy.status_code == 503
            assert _frame(busy) == [None, "ERR_SERVICE_BUSY", None]
            release.set()
            assert [_frame(await t) for t in held] == [["r1", None, 1], ["r2", None, 2]]
            assert (await client.post(url, content=GOOD)).status_code == 200
    finally:
        await server.close()
