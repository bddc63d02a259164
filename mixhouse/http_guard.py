"""Request hygiene shared by the HTTP API and the Jobcoin ledger: :class:`RequestGuardMiddleware`.

Every request passes these checks *before* any route, form parser or JSON parser sees it:

=====================================================  ======  ====================
refusal                                                status  ``slug``
=====================================================  ======  ====================
a NUL character in the path or the query string         400    ``nul-character``
``Content-Length`` above ``max_body_bytes``             413    ``body-too-large``
a streamed (chunked) body growing past ``max_body_bytes``  413    ``body-too-large``
a non-form body nested deeper than ``max_json_depth``   400    ``json-too-deep``
=====================================================  ======  ====================

Why each one:

* PostgreSQL ``text`` cannot hold NUL, and no Mixhouse or ledger name contains one, so a NUL
  can only fail later, inside a query, as a 500.
* A body is buffered whole by the parsers; without a cap one request makes the process read
  100 MiB. The cap is checked on ``Content-Length`` before a byte is read, then counted
  while reading, since a chunked body declares no length.
* Python's JSON parser recurses once per ``[`` or ``{``; a body of 100,000 brackets
  exhausts the C stack when a dependency has raised the recursion limit (py_ecc does, see
  :mod:`mixhouse.recursion`) and is a ``RecursionError`` (a 500) otherwise. The depth is
  measured by a linear scan that never recurses. It applies to every body that is not a
  form, because FastAPI parses a body without ``Content-Type`` as JSON too; form bodies are
  parsed without recursion.

The body is read here once and replayed to the app, so routes see it unchanged. Refusals
are built by a ``respond`` callable, because the API answers RFC 9457 problems and the
ledger answers the original Jobcoin ``{"error": ...}`` shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: the largest legitimate body is a few KiB
DEFAULT_MAX_JSON_DEPTH = 64  # legitimate bodies nest 3 levels at most

_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
# A JSON string, escapes included; brackets inside strings do not nest anything.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# Every byte but the four brackets, for bytes.translate(None, delete=...).
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENERS = frozenset(b"[{")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the guard refused a request.

    Attributes:
        status: the HTTP status to answer (400 or 413).
        slug: a stable name of the refusal (``body-too-large``...), for problem types.
        title: a short summary, the same for every occurrence of this refusal.
        detail: what was wrong with this request, for a human.
    """

    status: int
    slug: str
    title: str
    detail: str


Responder = Callable[[Refusal, Scope], Response]


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether ``body``, read as JSON, opens more than ``limit`` nested arrays or objects.

    Brackets inside JSON strings are ignored. The scan is linear and stops at the first
    bracket past ``limit``; it never recurses, so any body is safe to measure. An
    unterminated string leaves its brackets counted (the body is not JSON anyway).
    """
    # Fast path for nearly every real body: fewer openers than the limit cannot exceed it.
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    skeleton = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in skeleton:
        if byte in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _media_type(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-type":
            # The first header wins, as in Starlette's Headers.get.
            media_type: str = value.decode("latin-1").split(";", 1)[0].strip().lower()
            return media_type
    return ""


def _content_length(scope: Scope) -> int | None:
    """The declared length, or ``None`` when absent or unreadable (the server has already
    refused an unreadable one; counting the bytes read still applies)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


def _has_nul(scope: Scope) -> bool:
    query: bytes = scope.get("query_string", b"")
    return "\x00" in scope.get("path", "") or b"\x00" in query or b"%00" in query


class RequestGuardMiddleware:
    """ASGI middleware enforcing the checks of this module on every HTTP request.

    Args:
        app: the application to protect.
        respond: builds the response of a :class:`Refusal` (problem+json for the API,
            ``{"error": ...}`` for the ledger).
        max_body_bytes: the largest body accepted, in bytes.
        max_json_depth: the deepest nesting of arrays and objects accepted in a non-form body.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        respond: Responder,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
    ) -> None:
        self.app = app
        self.respond = respond
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    def _too_large(self) -> Refusal:
        return Refusal(
            413, "body-too-large", "Content Too Large", f"the request body is larger than {self.max_body_bytes} bytes"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse the request (see the module docstring) or run the app with the body replayed."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _has_nul(scope):
            refusal = Refusal(
                400, "nul-character", "Bad Request", "the request path or query contains a NUL character (%00)"
            )
            await self.respond(refusal, scope)(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            # Refused before reading: the client learns at once, and nothing is buffered.
            await self.respond(self._too_large(), scope)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; there is no one to answer
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self.respond(self._too_large(), scope)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and _media_type(scope) not in _FORM_TYPES and json_depth_exceeds(body, self.max_json_depth):
            refusal = Refusal(
                400,
                "json-too-deep",
                "JSON nested too deeply",
                f"the request body nests arrays or objects deeper than {self.max_json_depth} levels "
                "(or its brackets do not match)",
            )
            await self.respond(refusal, scope)(scope, receive, send)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            # After the body, the app may wait for the disconnect: the real channel gives it.
            return await receive()

        await self.app(scope, replay, send)


# The methods an Allow header can name (RFC 9110 section 9, without CONNECT and TRACE).
_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(router: Router, scope: Scope) -> list[str]:
    """Every method some route of ``router`` serves on the path of ``scope``, sorted.

    Starlette's 405 names only the methods of the first route whose path matched, so a path
    served by two routes (``GET`` and ``POST`` on ``/api/v1/wallets``) answered
    ``Allow: POST``; the ``Allow`` header must list them all (RFC 9110, section 15.5.6).
    Each method is probed through the routes' own ``matches``, which also sees the routes
    of included routers (FastAPI keeps those behind one route object).
    """
    allowed = []
    for method in _METHODS:
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in router.routes):
            allowed.append(method)
    return allowed


def allow_header(request: Request) -> dict[str, str]:
    """``{"Allow": "GET, HEAD, POST"}`` for the request's path (see :func:`allowed_methods`)."""
    router: Router = request.app.router
    return {"Allow": ", ".join(allowed_methods(router, request.scope))}
