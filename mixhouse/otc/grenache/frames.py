"""Grenache's HTTP RPC frames, read under limits.

A request is ``POST http://<peer>/`` (path ignored) with body ``[rid, key, payload]``; the reply
is ``[rid, err|null, data]``. The header ``grc-compress: gzip`` says both bodies are gzipped
(``none`` or absent: neither). ``rid`` is the caller's id (Node uses a UUID v4), echoed back.
Source: bitfinexcom/grenache-nodejs-http ``lib/TransportRPCClient.js`` and
``lib/TransportRPCServer.js`` (0.7.13), grenache-nodejs-base ``lib/TransportRPC.js``.

Everything read from the network passes :func:`read_frame`: the body size is capped before and
after gunzip (a gzip bomb stops at ``max_body_bytes + 1`` bytes of output), nesting is measured
by a linear scan before the recursive JSON parser runs, and NUL characters (which PostgreSQL
``text`` cannot hold) and the non-JSON constants ``NaN``/``Infinity`` are refused.
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

from mixhouse.http_guard import json_depth_exceeds
from mixhouse.otc.grenache.errors import BadFrame

DEFAULT_MAX_BODY_BYTES = 4 << 20  # 4 MiB: an anti-entropy reply of a few thousand orders
DEFAULT_MAX_JSON_DEPTH = 32  # OTC payloads nest 4-5 levels
COMPRESS_HEADER = "grc-compress"

ERR_TOO_LARGE = "ERR_FRAME_TOO_LARGE"
ERR_GZIP = "ERR_FRAME_GZIP"
ERR_JSON = "ERR_FRAME_JSON"
ERR_TOO_DEEP = "ERR_FRAME_TOO_DEEP"
ERR_NUL = "ERR_FRAME_NUL"
ERR_SHAPE = "ERR_FRAME_SHAPE"
ERR_METHOD = "ERR_FRAME_METHOD"
ERR_INTERNAL = "ERR_SERVICE_INTERNAL"
ERR_REPLY_ENCODING = "ERR_REPLY_ENCODING"


def wants_gzip(header_value: str | None) -> bool:
    """Whether a ``grc-compress`` header value asks for gzip (Node checks ``includes('gzip')``)."""
    return header_value is not None and "gzip" in header_value.lower()


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON of ``value``.

    Raises:
        TypeError: ``value`` holds something JSON cannot carry.
        ValueError: it holds a NaN or an infinity, or a circular reference.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def gzip_bytes(data: bytes) -> bytes:
    """gzip at zlib's default level 6 (Node's ``zlib.gzip`` default), mtime 0."""
    return gzip.compress(data, compresslevel=6, mtime=0)


def gunzip_limited(data: bytes, limit: int) -> bytes:
    """Decompress one gzip member, refusing output beyond ``limit`` bytes.

    Raises:
        BadFrame: ``ERR_FRAME_TOO_LARGE`` (413) past the limit; ``ERR_FRAME_GZIP`` when the
            data is not gzip, is truncated, or has trailing bytes after the member.
    """
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(data, limit + 1)
    except zlib.error as exc:
        raise BadFrame(ERR_GZIP, str(exc)) from exc
    if len(out) > limit:
        raise BadFrame(ERR_TOO_LARGE, f"more than {limit} bytes once decompressed", status=413)
    if not decompressor.eof:
        raise BadFrame(ERR_GZIP, "truncated gzip data")
    if decompressor.unused_data:
        raise BadFrame(ERR_GZIP, "bytes after the gzip member")
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _holds_nul(value: Any) -> bool:
    # Iterative: the depth was already bounded, but a wide value must not recurse either.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return False


def decode_json(body: bytes, *, max_depth: int) -> Any:
    """Parse a frame body.

    Raises:
        BadFrame: ``ERR_FRAME_NUL`` (a NUL byte, or a ``\\u0000`` in a string),
            ``ERR_FRAME_TOO_DEEP`` (nested deeper than ``max_depth``), ``ERR_FRAME_JSON``
            (not UTF-8 JSON, a NaN/Infinity, an integer of more than 4300 digits).
    """
    if b"\x00" in body:
        raise BadFrame(ERR_NUL, "NUL byte in the body")
    if json_depth_exceeds(body, max_depth):
        raise BadFrame(ERR_TOO_DEEP, f"nested deeper than {max_depth}")
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadFrame(ERR_JSON, str(exc)[:200]) from exc
    if _holds_nul(value):
        raise BadFrame(ERR_NUL, "NUL character in a string")
    return value


def read_frame(body: bytes, *, compressed: bool, max_body_bytes: int, max_depth: int) -> Any:
    """The JSON value of a received body (gunzipped first when ``compressed``).

    Raises:
        BadFrame: see :func:`gunzip_limited` and :func:`decode_json`; ``ERR_FRAME_TOO_LARGE``
            when the raw body is over ``max_body_bytes``.
    """
    if len(body) > max_body_bytes:
        raise BadFrame(ERR_TOO_LARGE, f"more than {max_body_bytes} bytes", status=413)
    if compressed:
        body = gunzip_limited(body, max_body_bytes)
    return decode_json(body, max_depth=max_depth)


def parse_request(value: Any) -> tuple[str, str, Any]:
    """``(rid, key, payload)`` of a request frame ``[rid, key, payload]``.

    Raises:
        BadFrame: ``ERR_FRAME_SHAPE`` when it is not a 3-item list with a string rid and a
            non-empty string key (the rid is kept in the error when it is a string).
    """
    rid = value[0] if isinstance(value, list) and value and isinstance(value[0], str) else None
    if not isinstance(value, list) or len(value) != 3:
        raise BadFrame(ERR_SHAPE, "a request is [rid, key, payload]", rid=rid)
    if rid is None:
        raise BadFrame(ERR_SHAPE, "rid must be a string")
    key = value[1]
    if not isinstance(key, str) or not key:
        raise BadFrame(ERR_SHAPE, "key must be a non-empty string", rid=rid)
    return rid, key, value[2]


def parse_reply(value: Any, rid: str) -> tuple[str | None, Any]:
    """``(err, data)`` of a reply frame ``[rid, err|null, data]`` to request ``rid``.

    A reply whose rid is null is accepted when it carries an error: a server answers so when
    it could not read our request's rid (our own server does, for a refused frame).

    Raises:
        BadFrame: ``ERR_FRAME_SHAPE`` when it is not a 3-item list, the rid is another
            request's, or err is neither null nor a string.
    """
    if not isinstance(value, list) or len(value) != 3:
        raise BadFrame(ERR_SHAPE, "a reply is [rid, err, data]")
    reply_rid, err, data = value
    if err is not None and not isinstance(err, str):
        raise BadFrame(ERR_SHAPE, "err must be null or a string")
    if reply_rid != rid and not (reply_rid is None and err is not None):
        raise BadFrame(ERR_SHAPE, f"reply to {reply_rid!r}, not to {rid!r}")
    return err, data
