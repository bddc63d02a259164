"""The Grenache transport, spoken from Python: Grape DHT client, RPC peer (server and client).

Grenache (Bitfinex) is a DHT of *grapes* (npm ``grenache-grape``) where services announce
``key -> ip:port`` and peers call each other with HTTP RPC frames ``[rid, key, payload]`` ->
``[rid, err, data]``. No Python client exists; the framing here is ours and interoperates with
``grenache-nodejs-http`` (tests/interop/). Modules: ``errors``, ``frames`` (wire format and
limits), ``grape`` (:class:`GrapeClient`), ``server`` (:class:`RpcServer`), ``peer``
(:class:`GrenachePeer`).
"""

from __future__ import annotations

from mixhouse.otc.grenache.errors import (
    BadFrame,
    GrapeError,
    GrenacheError,
    InvalidPeerAddress,
    PeerUnavailable,
    RpcError,
)
from mixhouse.otc.grenache.grape import GrapeClient
from mixhouse.otc.grenache.peer import GrenachePeer, Handler, NotReady, parse_address

#: The service key every OTC node announces; the trailing version changes with the protocol.
OTC_SERVICE = "mixhouse:otc:v1"

__all__ = [
    "OTC_SERVICE",
    "BadFrame",
    "GrapeClient",
    "GrapeError",
    "GrenacheError",
    "GrenachePeer",
    "Handler",
    "InvalidPeerAddress",
    "NotReady",
    "PeerUnavailable",
    "RpcError",
    "parse_address",
]
