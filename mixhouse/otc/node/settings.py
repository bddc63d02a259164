"""The node's settings, clock and what it needs of its transport."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


MAX_FETCH = 500
MAX_DIGEST = 200_000


def now_ms() -> int:
    """Milliseconds since the Unix epoch (the clock signed into orders)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """Timers and limits of a node (tests shorten the timers).

    Attributes:
        ttl_ms: how long a signed status keeps an order alive (ms); the owner refreshes it.
        refresh_every_s: the owner re-signs its open orders this often (well inside the TTL).
        anti_entropy_every_s: digest exchange with every peer this often (and at start).
        outbox_every_s: confirmations and unanswered takes are retried this often.
        sweep_every_s: expired learned orders are dropped this often (a TTL after expiry).
        max_skew_ms: how far ahead of our clock a peer's creation time may be.
        request_timeout_s: timeout of one RPC to a peer.
    """

    ttl_ms: int = 60_000
    refresh_every_s: float = 15.0
    anti_entropy_every_s: float = 10.0
    outbox_every_s: float = 0.5
    sweep_every_s: float = 5.0
    max_skew_ms: int = 30_000
    request_timeout_s: float = 5.0


class Transport(Protocol):
    """What the node needs of its Grenache peer (:class:`~mixhouse.otc.grenache.peer.GrenachePeer`)."""

    @property
    def address(self) -> str:
        """This node's ``ip:port``."""
        ...

    async def peers(self) -> list[str]:
        """Addresses of the other live peers of the OTC service."""
        ...

    async def request(self, address: str, payload: Any, *, timeout_s: float = 5.0, key: str | None = None) -> Any:
        """One RPC. Raises RpcError (the peer's error reply) or PeerUnavailable."""
        ...
