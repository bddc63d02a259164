"""Structured logging (structlog), with secrets redacted."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

from mixhouse.config import Settings

SENSITIVE_KEYS = frozenset({"mnemonic", "private_key", "api_key", "password", "secret", "raw_tx"})


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key.lower() in SENSITIVE_KEYS:
            event[key] = "***"
    return event


def configure_logging(settings: Settings, *, level: int = logging.INFO) -> None:
    """JSON logs in production, readable console logs in development."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.environment == "production"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
    )
