"""The one HTTP client for calls to other people's servers (input URLs, webhooks).

Two guarantees no per-request option of httpx gives:

- **Pinned, checked addresses.** The connection is opened to an address the guard has just
  checked, inside the client's own connect step, so a name cannot resolve to a public address
  for the check and to a private one for the connection (DNS rebinding). TLS still verifies the
  certificate against the URL's host name.
- **A total deadline.** httpx's timeouts bound each read; a server that trickles one byte a
  second never trips them. Inside `deadline(s)`, every connect, read and write gets at most the
  time left, so a whole request ends by the deadline however the other side paces it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from collections.abc import Iterable, Iterator

import httpcore
import httpx

from omnijobs.netguard import Refused, resolve_public

_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("outbound_deadline", default=math.inf)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Every request of a guarded client made inside this block ends within `seconds` in all."""
    token = _deadline.set(min(_deadline.get(), time.monotonic() + seconds))
    try:
        yield
    finally:
        _deadline.reset(token)


def _left(timeout: float | None, error: type[Exception]) -> float:
    left = _deadline.get() - time.monotonic()
    if left <= 0:
        raise error("the request's total deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    """A connection whose every operation is cut to the time left before the deadline."""

    def __init__(self, inner: httpcore.NetworkStream):
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context, server_hostname: str | None = None, timeout: float | None = None):
        return _Stream(self.inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str):
        return self.inner.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """Resolves, checks every address, and connects to the first checked one."""

    def __init__(self, allowed_hosts: frozenset[str] = frozenset()):
        self.allowed_hosts = allowed_hosts
        self.inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable | None = None) -> httpcore.NetworkStream:
        address = host if host in self.allowed_hosts else resolve_public(host, port, self.allowed_hosts)[0]
        stream = self.inner.connect_tcp(address, port, _left(timeout, httpcore.ConnectTimeout), local_address,
                                        socket_options)
        return _Stream(stream)

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise Refused("unix sockets are not outbound targets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    def __init__(self, allowed_hosts: frozenset[str] = frozenset(), **kwargs):
        super().__init__(trust_env=False, **kwargs)
        # NOTE: httpx has no public option for the network backend of its pool; the pool reads it
        # on every new connection. tests/unit/test_outbound.py fails if this stops taking effect.
        self._pool._network_backend = GuardedBackend(allowed_hosts)


def guarded_client(allowed_hosts: frozenset[str] = frozenset(), **kwargs) -> httpx.Client:
    """An httpx client that connects only to checked public addresses (or `allowed_hosts`) and
    never follows redirects by itself (each hop must be checked by the caller)."""
    return httpx.Client(transport=GuardedTransport(allowed_hosts), follow_redirects=False, trust_env=False, **kwargs)
