"""Refusing outbound targets inside the deployment's own network (webhooks, input URLs).

A job may name a URL that OmniJobs then calls; without this check a client could make the
service reach its database, cloud metadata endpoint or admin ports (SSRF).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlparse

from omnijobs.errors import InvalidInput


# NAT64 (RFC 6052) addresses carry an IPv4 address in their last 32 bits.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def is_internal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for any address inside a private network, or an IPv6 address that embeds one."""
    if isinstance(ip, ipaddress.IPv6Address):
        # NOTE: 6to4 (2002::/16), Teredo, IPv4-mapped and NAT64 addresses route to the IPv4 address
        # they embed; Python counts 2002:7f00:1:: as global although it reaches 127.0.0.1.
        embedded = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        embedded += [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) for net in _NAT64 if ip in net]
        if any(e is not None and is_internal(e) for e in embedded):
            return True
    return (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
        or ip.is_unspecified or not ip.is_global
    )


def resolve_public(host: str, port: int, allowed_hosts: frozenset[str] = frozenset()) -> list[str]:
    """The addresses `host` resolves to, all of them public (or allowed); raise Refused otherwise."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"URL host '{host}' does not resolve") from exc
    addresses = []
    for info in infos:
        address = info[4][0]
        if address not in allowed_hosts and is_internal(ipaddress.ip_address(address.split("%", 1)[0])):
            raise Refused(f"URL host '{host}' resolves to a private or local address ({address}); refused")
        addresses.append(address)
    return addresses


class Refused(Exception):
    """An outbound target inside our own network (or one that does not resolve)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def check_url(url: str, *, field: str, allowed_hosts: frozenset[str] = frozenset(),
              schemes: tuple[str, ...] = ("https", "http")) -> str:
    """Return the URL if it may be called; raise InvalidInput naming `field` otherwise.

    `allowed_hosts` lists hosts or IPs exempt from the private-address check (tests allow
    127.0.0.1). Every address the name resolves to must be public, so a name with one public and
    one private address is refused.
    """
    # NOTE: urllib keeps control characters that httpx then refuses at send time; refuse them here.
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF for ch in url):
        raise InvalidInput("URL may not contain spaces, control characters or lone surrogates", field=field)
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
        resolve_public(host, port or (443 if parsed.scheme == "https" else 80), allowed_hosts)
    except Refused as exc:
        raise InvalidInput(exc.message, field=field) from exc
    return url
