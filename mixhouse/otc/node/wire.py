"""Messages as JSON data: what goes on the wire and the fingerprint of a copy received."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel


def to_json(model: BaseModel) -> Any:
    """A message as JSON data (what goes on the wire)."""
    return model.model_dump(mode="json")


def message_fingerprint(raw: Any) -> bytes | None:
    """SHA-256 of the canonical JSON of a message as received (None if it is not JSON data)."""
    try:
        return hashlib.sha256(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()).digest()
    except (TypeError, ValueError):
        return None
