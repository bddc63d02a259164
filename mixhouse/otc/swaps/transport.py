"""How a swap engine reaches the other node's engine: one request, one reply.

The OTC node carries swap messages over Grenache (``GrenachePeer.request``); tests and the
single-process demo use :class:`LocalTransport`, which calls the other engine directly and
can be told a node is offline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from mixhouse.errors import ChainError, MixhouseError


class PeerUnreachable(MixhouseError):
    """The other node did not answer: the message stays in the outbox and is sent again."""


class SwapTransport(Protocol):
    """Sends one swap message to ``peer`` and returns its reply.

    Raises:
        PeerUnreachable: no answer (retried later).
    """

    async def request(self, peer: str, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``message`` (``{"swap_id", "kind", "payload", "from"}``) to ``peer``."""
        ...


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class LocalTransport:
    """Engines in one process, by node name; ``offline`` names nodes that do not answer."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.offline: set[str] = set()

    def register(self, node: str, handler: Handler) -> None:
        """Deliver messages for ``node`` to ``handler`` (an engine's ``handle``)."""
        self.handlers[node] = handler

    async def request(self, peer: str, message: dict[str, Any]) -> dict[str, Any]:
        """Call ``peer``'s handler.

        Raises:
            PeerUnreachable: ``peer`` is offline, unknown, or failed on a chain error.
        """
        if peer in self.offline or message.get("from") in self.offline or peer not in self.handlers:
            raise PeerUnreachable(f"{peer} is not reachable")
        try:
            return await self.handlers[peer](message)
        except ChainError as exc:
            raise PeerUnreachable(f"{peer} failed: {exc}") from exc
