"""Server-sent events (the ``text/event-stream`` format of the WHATWG HTML standard, section
"Server-sent events") for pages that update without reloading.

:func:`change_stream` polls a snapshot function and sends an event only when the snapshot
changed, with a comment line now and then so that proxies keep the connection open. A stream
ends after ``lifetime`` seconds: the browser's ``EventSource`` reconnects by itself (after the
``retry`` delay sent first), so no connection lives forever and a server can restart freely.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

KEEPALIVE_SECONDS = 15.0


def sse_event(event: str, data: str) -> str:
    """One event: ``event: <name>`` then one ``data:`` line per line of ``data``."""
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {event}\n{lines}\n"


async def change_stream(
    request: Request,
    snapshot: Callable[[], Awaitable[str]],
    *,
    event: str,
    interval: float,
    lifetime: float = 300.0,
    retry_ms: int = 1000,
) -> AsyncIterator[str]:
    """Yield ``event`` with ``await snapshot()`` as data at start and whenever it changes.

    Args:
        request: the client's request (the stream stops when it disconnects).
        snapshot: renders the current state (HTML or JSON text).
        event: the event name the page listens to.
        interval: seconds between two snapshots.
        lifetime: seconds after which the stream ends (the client reconnects).
        retry_ms: the reconnection delay told to the client, milliseconds.
    """
    yield f"retry: {retry_ms}\n\n"
    last: str | None = None
    started = last_sent = time.monotonic()
    while time.monotonic() - started < lifetime:
        if await request.is_disconnected():
            return
        current = await snapshot()
        if current != last:
            last = current
            last_sent = time.monotonic()
            yield sse_event(event, current)
        elif time.monotonic() - last_sent > KEEPALIVE_SECONDS:
            last_sent = time.monotonic()
            yield ": keepalive\n\n"
        await asyncio.sleep(interval)


def sse_response(stream: AsyncIterator[str]) -> StreamingResponse:
    """A ``text/event-stream`` response that no cache or proxy buffers."""
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
