"""GrenachePeer against real grapes: announce, ready, lookup, RPC both ways, suspects, close."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mixhouse.otc.devnet import start_grapes
from mixhouse.otc.grenache import (
    GrapeClient,
    GrapeError,
    GrenachePeer,
    InvalidPeerAddress,
    NotReady,
    PeerUnavailable,
    RpcError,
)
from mixhouse.otc.grenache import peer as peer_module
from mixhouse.otc.grenache.frames import ERR_INTERNAL
from tests.fixtures.grapes import Grapes


def _service() -> str:
    # A key of its own per test: the session's grapes remember every announce for 120 s.
    return f"test:grenache:{uuid.uuid4().hex[:12]}"


async def _echo(key: str, payload: Any) -> Any:
    if isinstance(payload, dict) and payload.get("action") == "fail":
        raise RpcError("ERR_TEST_REFUSED")
    if isinstance(payload, dict) and payload.get("action") == "crash":
        raise RuntimeError("a bug in the handler")
    return {"key": key, "echo": payload}


def _peer(grapes: Grapes, service: str, index: int = 0, **kwargs: Any) -> GrenachePeer:
    urls = grapes.urls[index:] + grapes.urls[:index]
    return GrenachePeer(
        grape_url=urls[0], service=service, handler=kwargs.pop("handler", _echo), other_grape_urls=urls[1:], **kwargs
    )


async def test_two_peers_find_and_call_each_other(grapes: Grapes) -> None:
    service = _service()
    async with _peer(grapes, service, 0) as a, _peer(grapes, service, 1) as b:
        assert a.port > 0
        assert a.address == f"127.0.0.1:{a.port}"
        # ready() waited until each is listed on both grapes: no sleep, no retry here.
        assert await a.peers() == [b.address]
        assert await b.peers() == [a.address]
        payload = {"action": "ping", "args": [1, "two", {"three": [3]}]}
        assert await a.request(b.address, payload) == {"key": service, "echo": payload}
        assert await b.request(a.address, payload, key="other:key") == {"key": "other:key", "echo": payload}


async def test_gzip_both_ways_and_large_payloads(grapes: Grapes) -> None:
    service = _service()
    big = {"action": "sync", "args": ["x" * 200_000]}
    async with _peer(grapes, service) as a, _peer(grapes, service, 1) as b:
        for compress in (True, False, None):
            assert await a.request(b.address, big, compress=compress) == {"key": service, "echo": big}


async def test_error_replies(grapes: Grapes) -> None:
    service = _service()
    async with _peer(grapes, service) as a, _peer(grapes, service, 1) as b:
        with pytest.raises(RpcError) as refused:
            await a.request(b.address, {"action": "fail", "args": []})
        assert refused.value.message == "ERR_TEST_REFUSED"
        with pytest.raises(RpcError) as crashed:
            await a.request(b.address, {"action": "crash", "args": []})
        assert crashed.value.message == ERR_INTERNAL  # the bug's text stays in our log
        # An error reply is an answer: the peer is not suspected and still serves.
        assert b.address in await a.peers()
        assert await a.request(b.address, 7) == {"key": service, "echo": 7}


async def test_refusing_peer_is_suspected_then_retried(grapes: Grapes, monkeypatch: pytest.MonkeyPatch) -> None:
    service = _service()
    async with _peer(grapes, service) as a:
        b = _peer(grapes, service, 1)
        await b.start()
        await b.ready()
        dead_address = b.address
        await b.close()  # the grapes keep listing it until its announce ages out
        assert dead_address in await a.lookup(service)
        assert await a.peers() == [dead_address]
        with pytest.raises(PeerUnavailable):
            await a.request(dead_address, {"action": "ping", "args": []}, timeout_s=5.0)
        assert await a.peers() == []
        assert a.suspected() == [dead_address]
        # The suspect clock moves on past the first backoff (1 s): listed again, to be tried once more.
        skew = 0.0
        monkeypatch.setattr(peer_module, "time", SimpleNamespace(monotonic=lambda: time.monotonic() + skew))
        skew = peer_module.SUSPECT_BASE_S + 0.01
        assert await a.peers() == [dead_address]
        with pytest.raises(PeerUnavailable):
            await a.request(dead_address, 1)
        # A second failure doubles the backoff: still out after 1 s more, back after 2 s.
        skew += peer_module.SUSPECT_BASE_S + 0.01
        assert await a.peers() == []
        skew += peer_module.SUSPECT_BASE_S
        assert await a.peers() == [dead_address]


async def test_timeout_is_peer_unavailable(grapes: Grapes) -> None:
    never = asyncio.Event()

    async def hang(key: str, payload: Any) -> Any:
        await never.wait()
        return None

    service = _service()
    async with _peer(grapes, service) as a, _peer(grapes, service, 1, handler=hang, drain_timeout_s=0.5) as b:
        with pytest.raises(PeerUnavailable, match=r"Timeout"):
            await a.request(b.address, 1, timeout_s=0.3)
        assert b.address in a.suspected()


async def test_invalid_addresses_are_refused_before_sending(grapes: Grapes) -> None:
    async with _peer(grapes, _service()) as a:
        for address in ("localhost:80", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "http://x:1", "[::1]:80"):
            with pytest.raises(InvalidPeerAddress):
                await a.request(address, 1)


async def test_ready_waits_for_a_late_grape_then_fails_cleanly() -> None:
    # A grape that does not exist: start() binds, ready() gives up with NotReady, close() cleans.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    peer = GrenachePeer(grape_url=f"http://127.0.0.1:{dead_port}", service=_service(), handler=_echo)
    await peer.start()
    with pytest.raises(NotReady):
        await peer.ready(timeout_s=1.0)
    await peer.close()
    with pytest.raises(GrapeError):
        await GrapeClient(f"http://127.0.0.1:{dead_port}").lookup("k")


async def test_close_drains_in_flight_requests(grapes: Grapes) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(key: str, payload: Any) -> Any:
        started.set()
        await release.wait()
        return "done"

    service = _service()
    async with _peer(grapes, service) as a:
        b = _peer(grapes, service, 1, handler=slow)
        await b.start()
        await b.ready()
        call = asyncio.create_task(a.request(b.address, 1, timeout_s=30))
        await started.wait()
        closing = asyncio.create_task(b.close())
        await asyncio.sleep(0)  # let close() begin: it must wait for the handler
        assert not closing.done()
        release.set()
        assert await call == "done"
        await closing
        with pytest.raises(PeerUnavailable):
            await a.request(b.address, 1, timeout_s=5)


def _open_fds() -> dict[str, str]:
    fds: dict[str, str] = {}
    for fd in Path("/proc/self/fd").iterdir():
        try:
            fds[fd.name] = str(fd.readlink())
        except FileNotFoundError:  # the directory's own fd, closed once listed
            continue
    return fds


async def test_fifty_peers_start_and_stop_without_leaks(grapes: Grapes) -> None:
    service = _service()
    # A witness peer stays up throughout: the 50 call it too, so a client session left open
    # would keep connections (fds on both sides) alive to it after the 50 are closed.
    async with _peer(grapes, service) as witness:
        # One warm-up cycle first: the first use of aiohttp/httpx/structlog opens lasting fds
        # (certificate store, loggers) that are not leaks.
        async with _peer(grapes, service, 1) as warm:
            await warm.request(witness.address, "warm-up")
        before_fds = _open_fds()
        before_tasks = asyncio.all_tasks()
        peers = [_peer(grapes, service, i % 2) for i in range(50)]
        for p in peers:
            await p.start()
        await asyncio.gather(*(p.ready() for p in peers))
        # Every peer serves: each calls the next one, and the witness.
        replies = await asyncio.gather(*(p.request(peers[(i + 1) % 50].address, i) for i, p in enumerate(peers)))
        assert [r["echo"] for r in replies] == list(range(50))
        await asyncio.gather(*(p.request(witness.address, i) for i, p in enumerate(peers)))
        listed = set(await peers[0].lookup(service))
        assert {p.address for p in peers} <= listed
        await asyncio.gather(*(p.close() for p in peers))
        assert asyncio.all_tasks() == before_tasks
        # Our sockets close at once; the witness closes its side when it reads their EOF.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            after_fds = _open_fds()
            leaked = {fd: target for fd, target in after_fds.items() if before_fds.get(fd) != target}
            if not leaked or loop.time() > deadline:
                break
            await asyncio.sleep(0.01)  # poll interval under the deadline
        assert not leaked


async def test_peers_fall_back_to_the_other_grape_when_ours_dies() -> None:
    # Grapes of its own: this test kills one.
    with start_grapes(ports=None) as own:
        service = _service()
        async with _peer(own, service, 0) as a, _peer(own, service, 1) as b:
            own.processes[0].kill()
            own.processes[0].wait()
            # a's grape refuses connections now: a's lookups go to grape 2, which still lists b
            # (slowly: its DHT queries to the dead grape time out first, ~2.5 s).
            assert b.address in await a.peers(fresh=True)
            assert await a.request(b.address, "still here") == {"key": service, "echo": "still here"}
            # a's announce loop keeps failing and retrying without ending.
            assert a.announcing
        assert not a.announcing


async def test_empty_lookups_are_never_cached(grapes: Grapes) -> None:
    grape = GrapeClient(grapes.urls[0], cache_s=60.0)
    try:
        key = _service()
        assert await grape.lookup(key) == []
        await grape.announce(key, 4001)
        # The empty answer was not kept: the next cached lookup asks the grape and sees 4001.
        assert await grape.lookup(key) == ["127.0.0.1:4001"]
        await grape.announce(key, 4002)
        # A non-empty answer is kept (60 s here) ...
        assert await grape.lookup(key) == ["127.0.0.1:4001"]
        # ... unless the caller asks afresh.
        assert sorted(await grape.lookup(key, use_cache=False)) == ["127.0.0.1:4001", "127.0.0.1:4002"]
    finally:
        await grape.aclose()
