"""Signed orders and statuses: ids from content, BIP-340 signatures, and strict validation of
everything a peer can send (each refusal is an InvalidMessage, never a crash)."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mixhouse.otc.grenache.errors import PeerUnavailable
from mixhouse.otc.identity import KeyFileError, NodeKey
from mixhouse.otc.orders import (
    InvalidMessage,
    OrderBody,
    StatusBody,
    canonical,
    new_nonce,
    order_id,
    parse_announcement,
    sign_order,
    sign_status,
)
from mixhouse.otc.protocol import ack_digest, check_ack

NOW = 1_800_000_000_000
LIMITS = {"now_ms": NOW, "max_skew_ms": 30_000, "max_ttl_ms": 600_000}


def _announcement(key: NodeKey, **terms: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "owner": key.node_id,
        "pair": "BTC/USDT",
        "side": "sell",
        "quantity": 50_000_000,
        "price": 60_000_500_000,
        "created_at_ms": NOW,
        "nonce": new_nonce(),
    }
    fields.update(terms)
    order = sign_order(key, OrderBody(**fields))
    status = sign_status(
        key,
        StatusBody(
            order_id=order.id,
            version=1,
            remaining=order.body.quantity,
            state="open",
            expires_at_ms=NOW + 60_000,
            address="127.0.0.1:5000",
        ),
    )
    return {"order": order.model_dump(mode="json"), "status": status.model_dump(mode="json")}


def test_a_valid_announcement_parses_and_its_id_is_its_content() -> None:
    key = NodeKey.generate()
    raw = _announcement(key)
    parsed = parse_announcement(raw, **LIMITS)
    assert parsed.order.id == order_id(parsed.order.body)
    assert raw["order"]["body"]["quantity"] == "50000000"  # amounts travel as strings
    assert parsed.order.body.quantity == 50_000_000
    # Same terms, another nonce: another id.
    assert parse_announcement(_announcement(key), **LIMITS).order.id != parsed.order.id
    assert canonical(parsed.order.body) == canonical(OrderBody.model_validate(raw["order"]["body"]))


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (("order", "body", "quantity"), "0", "quantity"),
        (("order", "body", "quantity"), "-5", "decimal string"),
        (("order", "body", "quantity"), 5.0, "decimal string"),
        (("order", "body", "quantity"), "9" * 41, "decimal string"),
        (("order", "body", "quantity"), "100000000000000000000", "quantity"),
        (("order", "body", "price"), "0", "price"),
        (("order", "body", "price"), "60000500001", "tick"),
        (("order", "body", "pair"), "BTC/XYZ", "unknown pair"),
        (("order", "body", "pair"), "BTC/US\x00T", "NUL"),
        (("order", "body", "side"), "both", "side"),
        (("order", "body", "extra"), "x", "extra"),
        (("order", "body", "created_at_ms"), NOW + 3_600_000, "future"),
        (("status", "body", "expires_at_ms"), NOW - 1, "expired"),
        (("status", "body", "expires_at_ms"), NOW + 3_600_000, "too far"),
        (("status", "body", "remaining"), "60000000", "above"),
        (("order", "sig"), "00" * 64, "signature"),
        (("status", "sig"), "ab" * 64, "signature"),
    ],
)
def test_bad_input_is_refused(path: tuple[str, ...], value: Any, reason: str) -> None:
    raw = _announcement(NodeKey.generate())
    target = raw
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(InvalidMessage, match=f"(?i){reason}"):
        parse_announcement(raw, **LIMITS)


def test_a_changed_term_breaks_the_signature() -> None:
    raw = _announcement(NodeKey.generate())
    raw["order"]["body"]["price"] = "59000000000"
    with pytest.raises(InvalidMessage, match="signature"):
        parse_announcement(raw, **LIMITS)


def test_a_status_signed_by_another_key_is_refused() -> None:
    owner, other = NodeKey.generate(), NodeKey.generate()
    raw = _announcement(owner)
    forged = sign_status(other, StatusBody.model_validate(raw["status"]["body"]))
    raw["status"] = forged.model_dump(mode="json")
    with pytest.raises(InvalidMessage, match="signature"):
        parse_announcement(raw, **LIMITS)


def test_only_the_owner_signs_an_order() -> None:
    owner, other = NodeKey.generate(), NodeKey.generate()
    body = OrderBody.model_validate(_announcement(owner)["order"]["body"])
    with pytest.raises(InvalidMessage):
        sign_order(other, body)


def test_key_file_is_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "node" / "otc_node.key"
    first = NodeKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert NodeKey.load_or_create(path).node_id == first.node_id
    assert path.read_text().strip() not in repr(first)
    path.chmod(0o644)
    with pytest.raises(KeyFileError):
        NodeKey.load_or_create(path)


def test_the_otc_feature_imports_no_other_feature() -> None:
    code = (
        "import sys, mixhouse.otc.runtime, mixhouse.otc.cli, mixhouse.otc.demo;"
        "print([m for m in sys.modules if m.startswith(('mixhouse.mixer', 'mixhouse.wallets'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_a_confirmation_counts_as_delivered_only_with_the_partys_signed_ack() -> None:
    party, stranger = NodeKey.generate(), NodeKey.generate()
    tid = "ab" * 32
    check_ack({"ok": True, "ack": party.sign(ack_digest(tid))}, node=party.node_id, trade_id=tid)
    for reply in ({"ok": True}, {"ok": True, "ack": stranger.sign(ack_digest(tid))}, ["ok"], None):
        with pytest.raises(PeerUnavailable):
            check_ack(reply, node=party.node_id, trade_id=tid)
    with pytest.raises(PeerUnavailable):
        check_ack({"ack": party.sign(ack_digest("cd" * 32))}, node=party.node_id, trade_id=tid)
