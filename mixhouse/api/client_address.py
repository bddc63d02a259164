"""Who is asking: the client identity that the mix-creation limits count by.

The identity is the peer address of the connection. Behind a reverse proxy every request comes
from the proxy, so when the peer is one of ``settings.trusted_proxies`` the client is read from
``X-Forwarded-For`` instead: each proxy appends the address it received the request from, so
the list is read from the right, skipping the trusted proxies, and the first address that is
not one is the client (the entries further left were written by the client itself and prove
nothing). A header from a peer that is not a trusted proxy is ignored: anyone can write one.

IPv6 addresses count by network (``settings.rate_limit_ipv6_prefix``, /64 by default): one host
usually holds a whole /64 and could otherwise rotate through its addresses. IPv4-mapped IPv6
addresses count as their IPv4 address.

Source: RFC 7239 section 5.2 (the header's form and trust), MDN "X-Forwarded-For" (reading it
from the right, trusted proxies only).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.requests import Request

from mixhouse.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A peer that is no IP address (a unix socket, a test transport without a client).
UNKNOWN_CLIENT = "unknown"


def _parse(text: str) -> IPAddress | None:
    """An address from a peer or a header entry; ``None`` if it is none. Accepts the bracketed
    and ``:port`` forms some proxies write (``[2001:db8::1]:443``, ``192.0.2.1:80``)."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def _identity(address: IPAddress, ipv6_prefix: int) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)


def client_identity(request: Request, settings: Settings) -> str:
    """The identity the limits of :mod:`mixhouse.mixer.admission` count ``request`` under.

    Returns:
        An IPv4 address (``"192.0.2.7"``), an IPv6 network (``"2001:db8:1:2::/64"``), or
        ``"unknown"`` when the peer has no IP address.
    """
    peer = _parse(request.client.host) if request.client is not None else None
    if peer is None:
        return UNKNOWN_CLIENT
    proxies: list[IPNetwork] = [ipaddress.ip_network(str(net)) for net in settings.trusted_proxies]
    client = peer
    if proxies and _trusted(peer, proxies):
        hops = [hop for header in request.headers.getlist("x-forwarded-for") for hop in header.split(",")]
        for hop in reversed(hops):
            address = _parse(hop)
            if address is None:
                # Not an address: whoever wrote it is not a proxy we trust; count the request
                # under the last hop a trusted proxy vouched for.
                break
            client = address
            if not _trusted(address, proxies):
                break
    return _identity(client, settings.rate_limit_ipv6_prefix)
