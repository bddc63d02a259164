"""Running the HTTP services (API, ledger) and the worker inside one asyncio process.

Used by ``mixhouse demo`` and the end-to-end tests; the production commands (``serve``,
``worker``, ``ledger serve``) run one service each.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress

import uvicorn


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _signals_left_alone() -> Iterator[None]:
    yield


@asynccontextmanager
async def running_server(server: uvicorn.Server) -> AsyncIterator[uvicorn.Server]:
    """Start ``server`` in a task, wait until it listens, stop it on exit.

    The process owns its signals, not the server: uvicorn's ``serve()`` would otherwise take
    SIGINT/SIGTERM for itself and re-raise them when it stops, a second Ctrl-C in the middle of
    the clean-up the first one started (see :mod:`mixhouse.termination`).

    Raises:
        RuntimeError: the server stopped before it started listening (port taken...).
    """
    server.capture_signals = _signals_left_alone  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            raise RuntimeError("the HTTP server stopped before it started listening")
        await asyncio.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def background(coro: Awaitable[None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``coro`` in a task for the duration of the block, then cancel it."""

    async def _wrap() -> None:
        await coro

    task = asyncio.create_task(_wrap())
    try:
        yield task
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
