"""A TCP proxy in front of a real node that loses the answer to one send.

The "unknown outcome" of a broadcast is a request that reached the node, was acted on, and
whose answer never came back. A mocked transport can only pretend that; this proxy makes it
happen on the wire: it forwards every byte to the real node (anvil, bcoin, the Jobcoin ledger)
and, for the first request whose bytes contain the chain's send marker
(``eth_sendRawTransaction``, ``sendrawtransaction``, ``POST /api/transactions``), waits until the
node has answered, so the send is done, then either hangs up (``"dropped"``) or keeps the
answer and stays silent until the client gives up (``"timeout"``).

HTTP/1.1 clients keep connections alive, but they send one request and wait for its answer
before the next, so the first answer after the marker went by on a connection is the send's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

Mode = Literal["dropped", "timeout"]
_CHUNK = 65536


@dataclass
class LosingProxy:
    """State of a running proxy.

    Attributes:
        url: the upstream URL with its host and port replaced by the proxy's.
        marker: bytes that identify the send request.
        mode: what happens to the send's answer (see the module docstring).
        lost: how many answers were lost so far (at most one).
    """

    url: str
    marker: bytes
    mode: Mode
    lost: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)


async def _pipe_to_node(
    proxy: LosingProxy, client: asyncio.StreamReader, node: asyncio.StreamWriter, armed: asyncio.Event
) -> None:
    while data := await client.read(_CHUNK):
        # The marker is looked for before the bytes go on, so the event is set before the node
        # can have answered.
        if proxy.lost == 0 and proxy.marker in data:
            armed.set()
        node.write(data)
        await node.drain()


async def _pipe_to_client(
    proxy: LosingProxy, node: asyncio.StreamReader, client: asyncio.StreamWriter, armed: asyncio.Event
) -> None:
    while data := await node.read(_CHUNK):
        if armed.is_set() and proxy.lost == 0:
            proxy.lost += 1
            if proxy.mode == "dropped":
                return  # the caller closes both sides: the client sees the connection drop
            await asyncio.Event().wait()  # "timeout": hold the connection open, answer nothing
        client.write(data)
        await client.drain()


@contextlib.asynccontextmanager
async def losing_proxy(upstream_url: str, marker: bytes, mode: Mode) -> AsyncIterator[LosingProxy]:
    """Serve a :class:`LosingProxy` for ``upstream_url`` on a free loopback port.

    Every connection and task is closed on exit, so nothing outlives the test.
    """
    parts = urlsplit(upstream_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    writers: list[asyncio.StreamWriter] = []

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        writers.append(client_writer)
        node_reader, node_writer = await asyncio.open_connection(host, port)
        writers.append(node_writer)
        armed = asyncio.Event()
        up = asyncio.create_task(_pipe_to_node(proxy, client_reader, node_writer, armed))
        down = asyncio.create_task(_pipe_to_client(proxy, node_reader, client_writer, armed))
        proxy._tasks.update((up, down))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            for writer in (client_writer, node_writer):
                writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    proxy_port = server.sockets[0].getsockname()[1]
    proxy = LosingProxy(urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy_port}")), marker, mode)
    try:
        async with server:
            yield proxy
    finally:
        for task in proxy._tasks:
            task.cancel()
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
