"""Errors of the Grenache transport.

:class:`RpcError` is the peer's own answer (it replied, with an error); :class:`PeerUnavailable`
is the absence of a usable answer, after which the peer is suspected (left out of
:meth:`~mixhouse.otc.grenache.peer.GrenachePeer.peers` for a backoff period).
"""

from __future__ import annotations

from mixhouse.errors import MixhouseError


class GrenacheError(MixhouseError):
    """Base class of every Grenache transport error."""


class RpcError(GrenacheError):
    """The peer replied ``[rid, "message", null]``; raised by a handler, it becomes that reply.

    Attributes:
        message: the error string of the frame, as the peer wrote it (``ERR_...`` by
            Grenache's convention; Node's client turns it into ``Error(message)``).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PeerUnavailable(GrenacheError):
    """No usable reply: connection refused, timeout, or a frame we cannot read.

    After a timeout the request may have reached the peer and been acted on: a caller that
    retries must send an idempotent request.
    """


class InvalidPeerAddress(GrenacheError):
    """An address is not ``IPv4:port`` (what a grape's lookup lists); nothing was sent."""


class BadFrame(GrenacheError):
    """A frame (request or reply body) is too large, not gzip it claims to be, not JSON, too
    deep, holds a NUL character or is not the ``[rid, key|err, payload|data]`` list.

    Attributes:
        code: the ``ERR_FRAME_...`` string put in the error reply.
        status: the HTTP status of that reply (400, or 413 when too large).
        rid: the request id when the frame was readable that far, else None.
    """

    def __init__(self, code: str, detail: str, *, status: int = 400, rid: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.status = status
        self.rid = rid


class GrapeError(GrenacheError):
    """A grape did not answer, or answered an error string (``"No nodes to query"``,
    ``"ERR_GRAPE_LOOKUP"``) or something of the wrong type."""
