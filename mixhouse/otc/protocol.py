"""The messages of the take and of the trade confirmation, and the RPC actions a node serves.

Every RPC payload is ``{"action": str, "args": [...]}`` (grenache-cli's convention):

=============  ==================================  =====================================
action         args                                reply data
=============  ==================================  =====================================
``info``       ``[]``                              ``{"node_id", "address"}``
``announce``   ``[Announcement]``                  ``{"accepted": bool}``
``digest``     ``[]``                              ``{"orders": [[id, version], ...]}``
``fetch``      ``[[id, ...]]`` (at most 500)       ``{"orders": [Announcement, ...]}``
``take``       ``[TakeRequest]``                   ``TakeReply``
``confirm``    ``[Confirmation]``                  ``{"ok": true, "ack": sig}``
=============  ==================================  =====================================

A take is signed by the taker order's owner (so no one else can spend that order's quantity)
and is idempotent by (maker order id, taker order id): the owner answers a repeat with the
grant it made, never a second one. A grant is signed by the maker order's owner: it is the
proof of the trade the taker's node records. A confirmation carries the grant and both orders,
signed by the sending party; each side sends one until the other acknowledges it with its
signature of ``tagged_hash("mixhouse/otc/ack", trade id)``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from mixhouse.otc.grenache.errors import PeerUnavailable
from mixhouse.otc.identity import BadSignature, NodeKey, tagged_hash, verify
from mixhouse.otc.orders import (
    Hex64,
    Hex128,
    Millis,
    OrderStatus,
    SignedOrder,
    Strict,
    WireInt,
    canonical,
)

TAKE_TAG = "mixhouse/otc/take"
GRANT_TAG = "mixhouse/otc/grant"
CONFIRM_TAG = "mixhouse/otc/confirm"
TRADE_TAG = "mixhouse/otc/trade"
ACK_TAG = "mixhouse/otc/ack"
Address = Annotated[str, Field(max_length=64, pattern=r"^[0-9A-Za-z.:\[\]-]{1,64}$")]


class TakeBody(Strict):
    """A taker's request: fill up to ``quantity`` (base units) of ``maker_order_id`` against
    ``taker_order``; ``reply_to`` is the taker node's address for the confirmation."""

    maker_order_id: Hex64
    taker_order: SignedOrder
    quantity: WireInt
    reply_to: Address


class TakeRequest(Strict):
    """A :class:`TakeBody` signed by the taker order's owner."""

    body: TakeBody
    sig: Hex128


class GrantBody(Strict):
    """The owner's fill: ``quantity`` base units at ``price`` (the maker's), agreed at ``agreed_at_ms``."""

    trade_id: Hex64
    maker_order_id: Hex64
    taker_order_id: Hex64
    quantity: WireInt
    price: WireInt
    agreed_at_ms: Millis


class Grant(Strict):
    """A :class:`GrantBody` signed by the maker order's owner."""

    body: GrantBody
    sig: Hex128


class TakeReply(Strict):
    """The owner's answer: a grant, or a refusal with its reason; and the order's new status."""

    outcome: Literal["granted", "refused"]
    reason: Annotated[str, Field(max_length=200)] = ""
    grant: Grant | None = None
    status: OrderStatus | None = None


class ConfirmBody(Strict):
    """One side's confirmation of a trade: the grant and both orders."""

    grant: Grant
    maker_order: SignedOrder
    taker_order: SignedOrder
    sender: Hex64
    reply_to: Address


class Confirmation(Strict):
    """A :class:`ConfirmBody` signed by its sender (the maker's or the taker's owner)."""

    body: ConfirmBody
    sig: Hex128


def trade_id(maker_order_id: str, taker_order_id: str) -> str:
    """The id of the trade of one fill: hex of ``tagged_hash("mixhouse/otc/trade", maker || taker)``
    over the two ids' bytes (one fill per pair of orders, so one trade)."""
    return tagged_hash(TRADE_TAG, bytes.fromhex(maker_order_id) + bytes.fromhex(taker_order_id)).hex()


def _digest(tag: str, body: Strict) -> bytes:
    return tagged_hash(tag, canonical(body))


def sign_take(key: NodeKey, body: TakeBody) -> TakeRequest:
    """Sign a take with the taker's key."""
    return TakeRequest(body=body, sig=key.sign(_digest(TAKE_TAG, body)))


def verify_take(request: TakeRequest) -> None:
    """Raises: BadSignature: the take is not signed by the taker order's owner."""
    verify(request.body.taker_order.body.owner, _digest(TAKE_TAG, request.body), request.sig)


def sign_grant(key: NodeKey, body: GrantBody) -> Grant:
    """Sign a grant with the maker's key."""
    return Grant(body=body, sig=key.sign(_digest(GRANT_TAG, body)))


def verify_grant(grant: Grant, maker_owner: str) -> None:
    """Raises: BadSignature: the grant is not signed by ``maker_owner``."""
    verify(maker_owner, _digest(GRANT_TAG, grant.body), grant.sig)


def sign_confirmation(key: NodeKey, body: ConfirmBody) -> Confirmation:
    """Sign a confirmation with the sender's key."""
    return Confirmation(body=body, sig=key.sign(_digest(CONFIRM_TAG, body)))


def verify_confirmation(confirmation: Confirmation) -> None:
    """Raises: BadSignature: the confirmation is not signed by its sender."""
    verify(confirmation.body.sender, _digest(CONFIRM_TAG, confirmation.body), confirmation.sig)


def ack_digest(trade_id_hex: str) -> bytes:
    """What a node signs to acknowledge the confirmation of trade ``trade_id_hex``."""
    return tagged_hash(ACK_TAG, bytes.fromhex(trade_id_hex))


def check_ack(reply: Any, *, node: str, trade_id: str) -> None:
    """Check that ``reply`` is ``node``'s signed acknowledgement of ``trade_id``.

    Raises:
        PeerUnavailable: no such acknowledgement (another node answered at that address, or a
            malformed reply): the confirmation is not delivered and is sent again.
    """
    ack = reply.get("ack") if isinstance(reply, dict) else None
    if not isinstance(ack, str) or len(ack) != 128:
        raise PeerUnavailable("the reply to a confirmation carries no acknowledgement")
    try:
        verify(node, ack_digest(trade_id), ack)
    except BadSignature as exc:
        raise PeerUnavailable(f"the acknowledgement is not the trade party's: {exc}") from exc
