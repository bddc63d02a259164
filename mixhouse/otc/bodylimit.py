"""A request body limit for the OTC node's HTTP API (a pure ASGI middleware).

Uvicorn and FastAPI read a request body whole, of any size, before validation refuses it; the
node's requests are small (an order is under 1 KiB), so a body above ``max_bytes`` is refused
with ``413`` as an RFC 9457 problem without being buffered: by its ``Content-Length`` at
once, or, sent chunked, as soon as the bytes received pass the limit (the rest is received
and dropped, so that the client reads the answer). A body within the limit is read here and
handed to the application as one message.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BYTES = 64 * 1024


class BodyLimit:
    """Refuse HTTP requests whose body is larger than ``max_bytes`` with a 413 problem.

    Args:
        app: the ASGI application.
        max_bytes: the largest body accepted, bytes.
    """

    def __init__(self, app: App, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._drain(receive)
            await self._refuse(scope, send)
            return
        # Read the body here, up to the limit (the application would read it whole anyway),
        # then hand it over: a limit raised inside the application's receive would be caught
        # there as a body that does not parse.
        parts: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                if message.get("more_body", False):
                    await self._drain(receive)
                await self._refuse(scope, send)
                return
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _drain(receive: Receive) -> None:
        """Receive the rest of the body, keeping none of it: a client still sending would see
        a reset connection instead of the 413 if the server answered and closed first."""
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    async def _refuse(self, scope: Scope, send: Send) -> None:
        body = json.dumps(
            {
                "type": "urn:mixhouse:problem:too-large",
                "title": "too large",
                "status": 413,
                "detail": f"the request body is larger than {self.max_bytes} bytes",
                "instance": scope.get("path", ""),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
