"""Structured logging (structlog) and uvicorn's logs, with secrets redacted.

What never reaches a log line, in either environment:

* local variables of a traceback: tracebacks are plain text (``traceback`` module), never
  the rich renderer with locals, which held the client's ``X-API-Key`` and ``mh_...`` key
  and, drawn inside the event loop, stalled every request for seconds;
* values under sensitive keys (:data:`SENSITIVE_KEYS`: mnemonics, keys, passwords, the
  ``Authorization`` and ``X-API-Key`` headers...), replaced by ``***``;
* a user API key anywhere in a message or traceback (``mh_`` followed by its token);
* a mix id: it is the only handle on a mix, so whoever reads it can follow the mix.
  ``mix_id`` values become a fingerprint (``mixfp:`` and 12 hex digits of its SHA-256: the
  same mix gives the same fingerprint, so lines still correlate), mix paths
  (``/api/v1/mixes/<id>``) become ``/api/v1/mixes/{mix_id}``, and SQLAlchemy's
  ``[parameters: ...]`` in error messages (which would quote the id looked up) is dropped.

uvicorn's access log gets the same treatment through :func:`uvicorn_log_config`, which also
drops query values that may carry a mix id (``after``, ``entity_id``...): only the values of
:data:`_SAFE_QUERY_PARAMS` are kept.

Production logs are JSON lines with the traceback as text under ``exception``;
development logs are readable console lines with the same plain traceback below.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qsl, quote

import structlog
import uvicorn.config

from mixhouse.config import Settings

SENSITIVE_KEYS = frozenset(
    {
        "mnemonic",
        "private_key",
        "api_key",
        "password",
        "secret",
        "raw_tx",
        "authorization",
        "x-api-key",
        "x_api_key",
        "cookie",
        "token",
        "headers",
    }
)
MIX_ID_KEYS = frozenset({"mix_id", "owner_mix_id"})

_USER_KEY = re.compile(r"mh_[A-Za-z0-9_\-]{6,}")
# The API's mix paths and the mix page's (/mix/<id>, /mix/<id>/events; not /mix/check).
_MIX_PATH = re.compile(r"(/api/v1/mixes/|/mix/)(?!check(?:[/?#\s]|$))[^/?#\s\"'<>]+")
# SQLAlchemy appends the bound parameters on their own line of an error message.
_SQL_PARAMETERS = re.compile(r"\[parameters: [^\n]*")
# Query parameters whose values say nothing about a particular mix (filters, page sizes).
_SAFE_QUERY_PARAMS = frozenset({"state", "limit", "asset", "entity_type", "chain", "kind"})


def scrub(text: str) -> str:
    """``text`` with user API keys, mix paths and SQL parameter lists redacted."""
    text = _USER_KEY.sub("mh_***", text)
    text = _MIX_PATH.sub(r"\1{mix_id}", text)
    return _SQL_PARAMETERS.sub("[parameters: redacted]", text)


def redact_path(path: str) -> str:
    """A request path fit for a log: ``/api/v1/mixes/<id>`` -> ``/api/v1/mixes/{mix_id}``."""
    return _MIX_PATH.sub(r"\1{mix_id}", path)


def redact_target(target: str) -> str:
    """A request target (path and query) fit for a log.

    The path goes through :func:`redact_path`; query values are kept only for the parameters
    in :data:`_SAFE_QUERY_PARAMS`, the others read ``...``.
    """
    path, sep, query = target.partition("?")
    path = scrub(path)
    if not sep:
        return path
    pairs = parse_qsl(query, keep_blank_values=True)
    shown = "&".join(
        f"{quote(name, safe='')}={quote(value, safe='') if name in _SAFE_QUERY_PARAMS else '...'}"
        for name, value in pairs
    )
    return f"{path}?{shown}"


def mix_fingerprint(mix_id: str) -> str:
    """A stable stand-in for a mix id in logs: ``mixfp:`` + 12 hex digits of its SHA-256.

    Ids are 192 random bits, so the fingerprint correlates lines without revealing the id.
    """
    return "mixfp:" + hashlib.sha256(mix_id.encode()).hexdigest()[:12]


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        value = event[key]
        lowered = key.lower()
        if lowered in SENSITIVE_KEYS:
            event[key] = "***"
        elif lowered in MIX_ID_KEYS and isinstance(value, str):
            event[key] = mix_fingerprint(value)
        elif isinstance(value, str):
            event[key] = scrub(value)
    return event


def configure_logging(settings: Settings, *, level: int = logging.INFO) -> None:
    """JSON logs in production, readable console logs in development; both redacted.

    ``exc_info`` is rendered by ``format_exc_info`` into a plain-text ``exception`` field
    *before* redaction, so tracebacks are scrubbed like any other value and never show locals.
    """
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.environment == "production"
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
    )


class RedactingFilter(logging.Filter):
    """A ``logging`` filter for uvicorn's handlers: redacts access-log targets, messages and
    tracebacks (see the module docstring). It never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place and keep it."""
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            # uvicorn's access record: (client_addr, method, full_path, http_version, status_code).
            record.args = (args[0], args[1], redact_target(str(args[2])), args[3], args[4])
        elif not getattr(record, "_mixhouse_scrubbed", False):
            record.msg = scrub(record.getMessage())
            record.args = None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when set, so every handler prints the scrubbed text.
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        setattr(record, "_mixhouse_scrubbed", True)  # noqa: B010 - LogRecord has no such attribute
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging config with :class:`RedactingFilter` on both its handlers."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config.setdefault("filters", {})["mixhouse_redact"] = {"()": "mixhouse.logs.RedactingFilter"}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("mixhouse_redact")
    return config
