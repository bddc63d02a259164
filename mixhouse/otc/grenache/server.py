"""The RPC server side of a Grenache peer: an aiohttp low-level HTTP server speaking the frames.

aiohttp (not uvicorn) because its runner stops a server from inside a running program: it
installs no signal handlers (uvicorn's ``serve()`` captures SIGINT/SIGTERM per server, which
50 peers in one process would fight over), serves a socket we bound ourselves (the port is
known before anything is announced), and its ``cleanup()`` closes the listening socket,
waits for in-flight handlers up to a timeout, then closes every connection.

Every request gets a reply frame, never a dropped connection (Node's own server leaves a
request it cannot parse unanswered until the client's timeout):

====================================  ======  ===================================
request                               status  reply
====================================  ======  ===================================
not POST                              405     ``[null, "ERR_FRAME_METHOD", null]``
``max_in_flight`` requests already in   503     ``[null, "ERR_SERVICE_BUSY", null]`` (body unread)
body (or gunzipped body) over limit   413     ``[rid|null, "ERR_FRAME_TOO_LARGE", null]``
bad gzip, JSON, NUL, depth, shape     400     ``[rid|null, "ERR_FRAME_...", null]``
body not sent within the read timeout  408    ``[null, "ERR_FRAME_TIMEOUT", null]``
handler raised RpcError(msg)          200     ``[rid, msg, null]``
handler raised anything else          200     ``[rid, "ERR_SERVICE_INTERNAL", null]`` (logged)
handler returned data                 200     ``[rid, null, data]``
====================================  ======  ===================================

The reply is gzipped whenever the request's ``grc-compress`` header said gzip, as Node's client
gunzips the reply of every gzipped request.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from mixhouse.otc.grenache.errors import BadFrame, RpcError
from mixhouse.otc.grenache.frames import (
    COMPRESS_HEADER,
    ERR_INTERNAL,
    ERR_METHOD,
    ERR_REPLY_ENCODING,
    ERR_TOO_LARGE,
    encode_json,
    gzip_bytes,
    parse_request,
    read_frame,
    wants_gzip,
)

log = structlog.get_logger(__name__)

#: ``(key, payload) -> reply data``: both JSON values; raise :class:`RpcError` to reply an error.
Handler = Callable[[str, Any], Awaitable[Any]]

DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_DRAIN_TIMEOUT_S = 10.0
# Each request in flight may hold a body up to the cap (4 MiB by default): 256 bound that to 1 GiB.
DEFAULT_MAX_IN_FLIGHT = 256
ERR_BUSY = "ERR_SERVICE_BUSY"


class RpcServer:
    """Serve Grenache RPC frames on ``host:port`` and answer each with ``handler``.

    Args:
        handler: called once per well-formed request, concurrently.
        host: address to bind (127.0.0.1 by default: the OTC devnet is loopback).
        port: port to bind; 0 picks a free one (see :attr:`port` after :meth:`start`).
        max_body_bytes: largest request body accepted, before and after gunzip.
        max_json_depth: deepest nesting of arrays/objects accepted.
        read_timeout_s: a request body must arrive within this.
        drain_timeout_s: how long :meth:`close` waits for in-flight handlers.
        max_in_flight: requests answered at once; more are refused with ``ERR_SERVICE_BUSY``.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        host: str,
        port: int,
        max_body_bytes: int,
        max_json_depth: int,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self._handler = handler
        self._max_in_flight = max_in_flight
        self._host = host
        self.port = port
        self._max_body_bytes = max_body_bytes
        self._max_json_depth = max_json_depth
        self._read_timeout_s = read_timeout_s
        self._drain_timeout_s = drain_timeout_s
        self._runner: web.ServerRunner | None = None
        self.in_flight = 0  # requests being answered now

    async def start(self) -> None:
        """Bind and listen. Raises OSError when the port is taken."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        server = web.Server(self._handle, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=self._drain_timeout_s)
        await runner.setup()
        site = web.SockSite(runner, sock)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        self._runner = runner

    async def close(self) -> None:
        """Stop accepting, wait up to the drain timeout for in-flight requests, close every
        connection and the listening socket. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        length = request.content_length
        if length is not None and length > self._max_body_bytes:
            raise BadFrame(ERR_TOO_LARGE, f"Content-Length {length} over {self._max_body_bytes}", status=413)
        chunks: list[bytes] = []
        total = 0
        try:
            async with asyncio.timeout(self._read_timeout_s):
                async for chunk in request.content.iter_any():
                    total += len(chunk)
                    if total > self._max_body_bytes:
                        raise BadFrame(ERR_TOO_LARGE, f"body over {self._max_body_bytes} bytes", status=413)
                    chunks.append(chunk)
        except TimeoutError as exc:
            raise BadFrame("ERR_FRAME_TIMEOUT", "body not received in time", status=408) from exc
        return b"".join(chunks)

    async def _answer(self, request: web.BaseRequest, compressed: bool) -> tuple[int, list[Any]]:
        if request.method != "POST":
            return 405, [None, ERR_METHOD, None]
        try:
            body = await self._read_body(request)
            value = read_frame(
                body, compressed=compressed, max_body_bytes=self._max_body_bytes, max_depth=self._max_json_depth
            )
            rid, key, payload = parse_request(value)
        except BadFrame as exc:
            log.info("grenache_bad_frame", code=exc.code, detail=str(exc)[:200], remote=request.remote)
            return exc.status, [exc.rid, exc.code, None]
        try:
            data = await self._handler(key, payload)
        except RpcError as exc:
            return 200, [rid, exc.message, None]
        except Exception:  # a handler's bug becomes an error reply, the server stays up
            log.exception("grenache_handler_failed", key=key)
            return 200, [rid, ERR_INTERNAL, None]
        return 200, [rid, None, data]

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        compressed = wants_gzip(request.headers.get(COMPRESS_HEADER))
        if self.in_flight >= self._max_in_flight:
            return self._respond(503, [None, ERR_BUSY, None], compressed)
        self.in_flight += 1
        try:
            status, frame = await self._answer(request, compressed)
        finally:
            self.in_flight -= 1
        return self._respond(status, frame, compressed)

    def _respond(self, status: int, frame: list[Any], compressed: bool) -> web.Response:
        try:
            body = encode_json(frame)
        except (TypeError, ValueError) as exc:
            log.exception("grenache_reply_not_json", error=str(exc)[:200])
            body = encode_json([frame[0], ERR_REPLY_ENCODING, None])
        if compressed:
            body = gzip_bytes(body)
        headers = {"Content-Type": "application/json", COMPRESS_HEADER: "gzip" if compressed else "none"}
        return web.Response(status=status, body=body, headers=headers)
