"""Orders and their status updates: the signed records the OTC network carries.

An order has two signed parts:

* its **body** (:class:`OrderBody`), immutable: owner node id, pair, side, quantity (BASE base
  units), price (QUOTE base units per whole BASE coin), time in force, minimum fill, creation
  time (ms since the Unix epoch), an optional good-till time (ms: the owner never refreshes it
  past that) and a random nonce. Its id is the BIP-340 tagged hash
  ``"mixhouse/otc/order"`` of the body's canonical JSON, in hex; the owner signs that hash.
* its **status** (:class:`OrderStatus`), re-signed by the owner at every change: version
  (starts at 1, +1 at every change: a receiver keeps the highest, so stale updates lose),
  remaining quantity, state (``open``, ``cancelled``, ``filled``), expiry (ms; the owner pushes
  it forward while it is online) and the owner's current Grenache address (``ip:port``, where
  takes are sent).

Canonical JSON: keys sorted, no spaces, UTF-8, amounts as decimal strings (JavaScript peers
read them without loss). Signatures: BIP-340 Schnorr, see :mod:`mixhouse.otc.identity`.
Every field has limits; :func:`parse_announcement` refuses anything off (unknown pair,
zero, negative, oversized or off-tick amounts, NUL bytes, bad signature, expired, from the
future) with :class:`InvalidMessage` before anything is stored.
"""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any, Literal, NewType, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError

from mixhouse.errors import InvalidInput
from mixhouse.otc.identity import BadSignature, NodeKey, tagged_hash, verify
from mixhouse.otc.matching import InvalidOrder, check_price, check_quantity
from mixhouse.otc.pairs import PairRules, UnknownPair, pair_rules

OrderId = NewType("OrderId", str)
M = TypeVar("M", bound=BaseModel)

ORDER_TAG = "mixhouse/otc/order"
STATUS_TAG = "mixhouse/otc/status"
MAX_DIGITS = 40  # far above any amount a pair allows; refuses a 10 kB number before int()


class InvalidMessage(InvalidInput):
    """A peer's (or a user's) order message is malformed, out of limits or badly signed."""


def _wire_int(value: Any) -> int:
    # Decimal strings on the wire; ints accepted from Python callers. No bool, no float, no sign.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and 0 < len(value) <= MAX_DIGITS and value.isascii() and value.isdigit():
        return int(value)
    raise ValueError("expected a decimal string of digits")


WireInt = Annotated[int, BeforeValidator(_wire_int), PlainSerializer(str, return_type=str), Field(ge=0)]
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Hex128 = Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]
Millis = Annotated[int, Field(ge=0, le=2**53 - 1, strict=True)]
Side = Literal["buy", "sell"]
TimeInForce = Literal["GTC", "IOC", "FOK", "POST_ONLY"]
OrderState = Literal["open", "cancelled", "filled"]


class Strict(BaseModel):
    """Frozen, no unknown fields, strings of at most 200 characters."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=200)


class OrderBody(Strict):
    """The immutable, signed content of an order (see the module docstring)."""

    v: Literal[1] = 1
    owner: Hex64
    pair: Annotated[str, Field(max_length=16, pattern=r"^[A-Z0-9]{2,7}/[A-Z0-9]{2,7}$")]
    side: Side
    quantity: WireInt
    price: WireInt
    tif: TimeInForce = "GTC"
    min_fill: WireInt = 0
    created_at_ms: Millis
    good_till_ms: Millis | None = None
    nonce: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class SignedOrder(Strict):
    """An order body and its owner's signature of its id."""

    body: OrderBody
    sig: Hex128

    @property
    def id(self) -> OrderId:
        """The order id (hex of the tagged hash of the canonical body)."""
        return order_id(self.body)


class StatusBody(Strict):
    """The owner's latest word on an order (see the module docstring)."""

    order_id: Hex64
    version: Annotated[int, Field(ge=1, le=2**53 - 1, strict=True)]
    remaining: WireInt
    state: OrderState
    expires_at_ms: Millis
    address: Annotated[str, Field(max_length=64, pattern=r"^[0-9A-Za-z.:\[\]-]{1,64}$")]


class OrderStatus(Strict):
    """A status body and the owner's signature."""

    body: StatusBody
    sig: Hex128


class Announcement(Strict):
    """What the network carries about one order: its signed body and its latest signed status."""

    order: SignedOrder
    status: OrderStatus


def canonical(model: BaseModel) -> bytes:
    """The canonical JSON of a model: sorted keys, no spaces, amounts as strings, UTF-8."""
    return json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def order_id(body: OrderBody) -> OrderId:
    """The id of an order: hex of ``tagged_hash("mixhouse/otc/order", canonical(body))``."""
    return OrderId(tagged_hash(ORDER_TAG, canonical(body)).hex())


def new_nonce() -> str:
    """16 random bytes in hex: two orders with equal terms in the same millisecond differ."""
    return secrets.token_hex(16)


def sign_order(key: NodeKey, body: OrderBody) -> SignedOrder:
    """Sign ``body`` (whose owner must be ``key``'s node id).

    Raises:
        InvalidMessage: the body names another owner.
    """
    if body.owner != key.node_id:
        raise InvalidMessage("an order is signed by its owner only")
    return SignedOrder(body=body, sig=key.sign(bytes.fromhex(order_id(body))))


def sign_status(key: NodeKey, body: StatusBody) -> OrderStatus:
    """Sign a status body with the owner's key."""
    return OrderStatus(body=body, sig=key.sign(tagged_hash(STATUS_TAG, canonical(body))))


def check_terms(body: OrderBody) -> PairRules:
    """Check an order's terms against its pair's rules.

    Returns:
        The pair's rules.

    Raises:
        InvalidMessage: unknown pair, quantity or price zero, outside the pair's limits or not
            a multiple of its lot/tick, minimum fill above the quantity or off-lot.
    """
    try:
        rules = pair_rules(body.pair)
    except UnknownPair as exc:
        raise InvalidMessage(str(exc)) from exc
    # The engine's own checks (lot, tick, limits, and the lowest price at which one lot is
    # worth at least one quote base unit), so a valid message is always a valid engine order.
    try:
        check_quantity(rules, body.quantity, body.min_fill)
        check_price(rules, body.price)
    except InvalidOrder as exc:
        raise InvalidMessage(str(exc)) from exc
    return rules


def check_order(order: SignedOrder, *, now_ms: int, max_skew_ms: int) -> OrderId:
    """Validate a signed order: terms, creation time not in the future, owner's signature.

    Returns:
        The order id.

    Raises:
        InvalidMessage: see :func:`check_terms`; created more than ``max_skew_ms`` ahead of
            ``now_ms``; bad signature.
    """
    check_terms(order.body)
    if order.body.created_at_ms > now_ms + max_skew_ms:
        raise InvalidMessage("the order was created in the future")
    oid = order_id(order.body)
    try:
        verify(order.body.owner, bytes.fromhex(oid), order.sig)
    except BadSignature as exc:
        raise InvalidMessage(f"order {oid[:12]}: {exc}") from exc
    return oid


def check_status(status: OrderStatus, order: OrderBody, oid: str, *, now_ms: int, max_ttl_ms: int) -> None:
    """Validate a status against its order.

    Raises:
        InvalidMessage: another order's status, remaining above the quantity, an open order
            with nothing remaining, expired, expiring further than ``max_ttl_ms`` ahead, bad
            signature.
    """
    body = status.body
    if body.order_id != oid:
        raise InvalidMessage("the status belongs to another order")
    if body.remaining > order.quantity:
        raise InvalidMessage("remaining is above the order's quantity")
    if body.state == "open" and body.remaining == 0:
        raise InvalidMessage("an open order has something remaining")
    if body.expires_at_ms <= now_ms:
        raise InvalidMessage("the order has expired")
    if body.expires_at_ms > now_ms + max_ttl_ms:
        raise InvalidMessage("the order expires too far in the future")
    if order.good_till_ms is not None and body.expires_at_ms > order.good_till_ms:
        raise InvalidMessage("the status outlives the order's good-till time")
    try:
        verify(order.owner, tagged_hash(STATUS_TAG, canonical(body)), status.sig)
    except BadSignature as exc:
        raise InvalidMessage(f"status of {oid[:12]}: {exc}") from exc


def parse_announcement(raw: Any, *, now_ms: int, max_skew_ms: int, max_ttl_ms: int) -> Announcement:
    """Parse and fully validate an announcement from a peer.

    Raises:
        InvalidMessage: anything wrong (see :func:`check_order`, :func:`check_status`; NUL
            bytes, unknown fields, wrong types).
    """
    announcement = parse_model(Announcement, raw)
    oid = check_order(announcement.order, now_ms=now_ms, max_skew_ms=max_skew_ms)
    check_status(announcement.status, announcement.order.body, oid, now_ms=now_ms, max_ttl_ms=max_ttl_ms)
    return announcement


def parse_model(model: type[M], raw: Any) -> M:
    """``model`` validated from JSON data.

    Raises:
        InvalidMessage: it does not validate, or a string holds a NUL byte.
    """
    if _has_nul(raw, depth=0):
        raise InvalidMessage("NUL bytes are not allowed")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidMessage(f"invalid {model.__name__}: {where}: {first['msg']}") from None


def _has_nul(value: Any, *, depth: int) -> bool:
    if depth > 8:
        return True  # deeper than any message we define; refused by the same check
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k, depth=depth + 1) or _has_nul(v, depth=depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v, depth=depth + 1) for v in value)
    return False
