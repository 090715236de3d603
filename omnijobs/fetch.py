"""Downloading a job's media input from an http(s) URL, within limits and never into our own network."""

from __future__ import annotations

import socket
import time
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from omnijobs.errors import InvalidInput, TooLarge
from omnijobs.netguard import check_url

SCHEMES = ("https", "http")
MAX_REDIRECTS = 5


def fetch(url: str, *, field: str, max_bytes: int, timeout_s: float,
          allowed_hosts: frozenset[str] = frozenset()) -> bytes:
    """The body at `url`, following up to MAX_REDIRECTS redirects, each hop checked by the guard.

    Raises InvalidInput (refused target, HTTP error, timeout) or TooLarge (over `max_bytes`).
    `timeout_s` bounds the whole download, not just each read.
    """
    deadline = time.monotonic() + timeout_s
    with httpx.Client(follow_redirects=False, trust_env=False, timeout=timeout_s) as client:
        for _ in range(MAX_REDIRECTS + 1):
            target, headers, extensions = _pinned(url, field, allowed_hosts)
            try:
                with client.stream("GET", target, headers=headers, extensions=extensions) as resp:
                    if resp.is_redirect:
                        url = urljoin(url, resp.headers.get("location", ""))
                        continue
                    if resp.status_code != 200:
                        raise InvalidInput(f"fetching the URL answered HTTP {resp.status_code}", field=field)
                    return _read(resp, field, max_bytes, deadline, timeout_s)
            except httpx.TimeoutException as exc:
                raise InvalidInput(f"fetching the URL timed out (url_fetch_timeout_s={timeout_s})",
                                   field=field) from exc
            except httpx.HTTPError as exc:
                raise InvalidInput(f"fetching the URL failed: {type(exc).__name__}", field=field) from exc
    raise InvalidInput(f"the URL redirected more than {MAX_REDIRECTS} times", field=field)


def _read(resp: httpx.Response, field: str, max_bytes: int, deadline: float, timeout_s: float) -> bytes:
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"the URL's content is {declared} bytes; the limit (url_fetch_max_bytes) is {max_bytes}",
                       field=field)
    chunks, size = [], 0
    for chunk in resp.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"the URL's content exceeds the limit (url_fetch_max_bytes) of {max_bytes} bytes",
                           field=field)
        if time.monotonic() > deadline:
            raise InvalidInput(f"fetching the URL timed out (url_fetch_timeout_s={timeout_s})", field=field)
        chunks.append(chunk)
    return b"".join(chunks)


def _pinned(url: str, field: str, allowed_hosts: frozenset[str]) -> tuple[str, dict, dict]:
    """Check the URL, then connect to the very address that was checked.

    NOTE: resolving once to check and again to connect would let a name switch to a private
    address in between (DNS rebinding); so the request goes to the checked IP, with the original
    Host header and TLS server name.
    """
    check_url(url, field=field, allowed_hosts=allowed_hosts, schemes=SCHEMES)
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host in allowed_hosts:
        return url, {}, {}
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        address = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)[0][4][0]
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidInput(f"URL host '{host}' does not resolve", field=field) from exc
    literal = f"[{address}]" if ":" in address else address
    pinned = urlunsplit((parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
    check_url(pinned, field=field, allowed_hosts=allowed_hosts, schemes=SCHEMES)
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    return pinned, {"Host": host_header}, {"sni_hostname": host} if parts.scheme == "https" else {}
