"""Interop with Bitfinex's own Node.js Grenache libraries (npm grenache-nodejs-http/-link 0.7.13).

A Node ``PeerRPCClient`` finds our Python peer through a grape and calls it, gzip on and off,
and gets its replies and its error replies; our Python peer calls a Node ``PeerRPCServer``.
The Node scripts are in tests/interop/.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mixhouse.otc.devnet import find_grape_script
from mixhouse.otc.grenache import GrenachePeer, PeerUnavailable, RpcError
from mixhouse.otc.grenache.frames import ERR_INTERNAL
from tests.fixtures.grapes import Grapes

INTEROP = Path(__file__).resolve().parent / "interop"
NODE_DEADLINE_S = 60.0


async def _handler(key: str, payload: Any) -> Any:
    action = payload.get("action") if isinstance(payload, dict) else None
    if action == "fail":
        raise RpcError("ERR_TEST_REFUSED")
    if action == "crash":
        raise RuntimeError("bug")
    return {"key": key, "echo": payload, "server": "python"}


async def run_node_client(grape_url: str, service: str, calls: list[dict[str, Any]], repeat: int = 1) -> dict[str, Any]:
    """Run tests/interop/node_client.js; returns its JSON output."""
    node, _grape = find_grape_script()
    proc = await asyncio.create_subprocess_exec(
        str(node),
        str(INTEROP / "node_client.js"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    conf = {"grape": grape_url, "service": service, "calls": calls, "repeat": repeat}
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(conf).encode()), NODE_DEADLINE_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


@pytest_asyncio.fixture
async def python_peer(grapes: Grapes) -> AsyncIterator[GrenachePeer]:
    service = f"test:interop:{uuid.uuid4().hex[:12]}"
    # Announced on grape 2, ready (visible on grape 1 too) before any Node client looks up:
    # Node's Link would cache an empty lookup for 10 s.
    async with GrenachePeer(
        grape_url=grapes.urls[1], service=service, handler=_handler, other_grape_urls=grapes.urls[:1]
    ) as peer:
        yield peer


@pytest.mark.parametrize("compress", [True, False])
async def test_node_client_calls_python_peer(grapes: Grapes, python_peer: GrenachePeer, compress: bool) -> None:
    payloads: list[Any] = [
        {"action": "ping", "args": []},
        {"action": "place", "args": [{"pair": "BTC/USDT", "amount": "100000000", "price": 60_000_500_000}]},
        "a string",
        [1, 2, [3, {"deep": None}]],
        {"action": "big", "args": ["é€" * 20_000]},
    ]
    calls = [{"payload": p, "compress": compress} for p in payloads]
    calls += [{"payload": {"action": "fail"}, "compress": compress}]
    calls += [{"payload": {"action": "crash"}, "compress": compress}]
    out = await run_node_client(grapes.urls[0], python_peer.service, calls)
    results = out["results"]
    for payload, result in zip(payloads, results, strict=False):
        assert result == {"data": {"key": python_peer.service, "echo": payload, "server": "python"}}
    assert results[-2] == {"error": "ERR_TEST_REFUSED"}
    assert results[-1] == {"error": ERR_INTERNAL}


@dataclass
class NodeServer:
    """A running tests/interop/node_server.js."""

    service: str
    address: str
    process: asyncio.subprocess.Process

    async def stop(self) -> None:
        """Close its stdin (it exits), killing it if it lingers."""
        if self.process.returncode is not None:
            return
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@pytest_asyncio.fixture
async def node_server(grapes: Grapes) -> AsyncIterator[NodeServer]:
    """A Node PeerRPCServer announced on grape 1 through Node's Link."""
    node, _grape = find_grape_script()
    service = f"test:interop:node:{uuid.uuid4().hex[:12]}"
    proc = await asyncio.create_subprocess_exec(
        str(node),
        str(INTEROP / "node_server.js"),
        grapes.urls[0],
        service,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    server = NodeServer(service, "", proc)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), NODE_DEADLINE_S)
        assert line.startswith(b"ready "), line
        server.address = f"127.0.0.1:{int(line.split()[1])}"
        yield server
    finally:
        await server.stop()


async def _find(peer: GrenachePeer, address: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + NODE_DEADLINE_S
    while address not in await peer.peers(fresh=True):
        assert loop.time() < deadline, f"{address} never showed up on {peer.service}"
        await asyncio.sleep(0.05)  # poll interval while the DHT spreads the Node announce


async def test_python_peer_calls_node_server(grapes: Grapes, node_server: NodeServer) -> None:
    # Our peer announces on grape 2 and finds the Node server (announced on grape 1) by lookup.
    async with GrenachePeer(
        grape_url=grapes.urls[1], service=node_server.service, handler=_handler, other_grape_urls=grapes.urls[:1]
    ) as peer:
        await _find(peer, node_server.address)
        for compress in (True, False):
            payload = {"action": "ping", "args": ["x" * 5000, 1, None]}
            reply = await peer.request(node_server.address, payload, compress=compress)
            assert reply == {"key": node_server.service, "echo": payload, "server": "node"}
            with pytest.raises(RpcError) as refused:
                await peer.request(node_server.address, {"action": "fail"}, compress=compress)
            assert refused.value.message == "ERR_TEST_REFUSED"


async def test_dead_node_server_is_suspected(grapes: Grapes, node_server: NodeServer) -> None:
    async with GrenachePeer(grape_url=grapes.urls[0], service=node_server.service, handler=_handler) as peer:
        await _find(peer, node_server.address)
        await node_server.stop()
        # The grape still lists it (its announce lives on); the refused call makes it a suspect.
        assert node_server.address in await peer.lookup(node_server.service, fresh=True)
        with pytest.raises(PeerUnavailable):
            await peer.request(node_server.address, 1, timeout_s=5)
        assert node_server.address not in await peer.peers(fresh=True)
