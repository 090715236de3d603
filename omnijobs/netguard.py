"""Refusing outbound targets inside the deployment's own network (webhooks, input URLs).

A job may name a URL that OmniJobs then calls; without this check a client could make the
service reach its database, cloud metadata endpoint or admin ports (SSRF).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlparse

from omnijobs.errors import InvalidInput


def _is_internal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
        or ip.is_unspecified or not ip.is_global
    )


def check_url(url: str, *, field: str, allowed_hosts: frozenset[str] = frozenset(),
              schemes: tuple[str, ...] = ("https", "http")) -> str:
    """Return the URL if it may be called; raise InvalidInput naming `field` otherwise.

    `allowed_hosts` lists hosts or IPs exempt from the private-address check (tests allow
    127.0.0.1). Every address the name resolves to must be public, so a name with one public and
    one private address is refused.
    """
    try:
        parsed = urlparse(url)
        host, port = parsed.hostname, parsed.port
    except ValueError as exc:  # a malformed IPv6 literal or port
        raise InvalidInput(f"URL is malformed: {exc}", field=field) from None
    if parsed.scheme not in schemes:
        raise InvalidInput(f"URL scheme must be one of {', '.join(schemes)}", field=field)
    if not host:
        raise InvalidInput("URL has no host", field=field)
    if host in allowed_hosts:
        return url
    try:
        infos = socket.getaddrinfo(host, port or (443 if parsed.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidInput(f"URL host '{host}' does not resolve", field=field) from exc
    for info in infos:
        address = info[4][0]
        if address in allowed_hosts:
            continue
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if _is_internal(ip):
            raise InvalidInput(
                f"URL host '{host}' resolves to a private or local address ({address}); refused", field=field
            )
    return url
