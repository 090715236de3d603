"""Downloading a job's media input from an http(s) URL, within limits and never into our own network."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from urllib.parse import urljoin

import httpx

from omnijobs.errors import InvalidInput, TooLarge, TooManyRequests
from omnijobs.netguard import Refused, check_url
from omnijobs.outbound import deadline, guarded_client

SCHEMES = ("https", "http")
MAX_REDIRECTS = 5


class FetchSlots:
    """Caps on URL fetches running at once, in all and per key.

    NOTE: a fetch holds one of the API's request threads for up to its whole deadline; without
    a cap, a few dozen submits naming a slow server take every thread, health checks included.
    Over a cap the submit is refused at once (429) rather than queued behind the slow fetches.
    """

    def __init__(self, total: int, per_key: int, retry_after_s: int = 2):
        self.total, self.per_key, self.retry_after_s = total, per_key, retry_after_s
        self._lock = threading.Lock()
        self._running: Counter[str | None] = Counter()

    @contextlib.contextmanager
    def hold(self, owner: str | None, field: str) -> Iterator[None]:
        with self._lock:
            if self.total and sum(self._running.values()) >= self.total:
                raise TooManyRequests(f"the service is fetching {self.total} URLs already (url_fetch_concurrency); "
                                      "try again shortly or upload the file", self.retry_after_s, field=field)
            if self.per_key and self._running[owner] >= self.per_key:
                raise TooManyRequests(f"this key has {self.per_key} URL fetches running already "
                                      "(url_fetch_per_key); try again shortly or upload the file",
                                      self.retry_after_s, field=field)
            self._running[owner] += 1
        try:
            yield
        finally:
            with self._lock:
                self._running[owner] -= 1
                if not self._running[owner]:
                    del self._running[owner]


def fetch(url: str, *, field: str, max_bytes: int, timeout_s: float,
          allowed_hosts: frozenset[str] = frozenset()) -> bytes:
    """The body at `url`, following up to MAX_REDIRECTS redirects, each hop checked by the guard.

    Raises InvalidInput (refused target, HTTP error, timeout) or TooLarge (over `max_bytes`).
    `timeout_s` bounds the whole download, redirects included, however slowly the server answers.
    """
    with deadline(timeout_s), guarded_client(allowed_hosts, timeout=timeout_s) as client:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url, field=field, allowed_hosts=allowed_hosts, schemes=SCHEMES)
            try:
                with client.stream("GET", url) as resp:
                    if resp.is_redirect:
                        url = urljoin(url, resp.headers.get("location", ""))
                        continue
                    if resp.status_code != 200:
                        raise InvalidInput(f"fetching the URL answered HTTP {resp.status_code}", field=field)
                    return _read(resp, field, max_bytes)
            except Refused as exc:  # the address the name resolved to when connecting
                raise InvalidInput(exc.message, field=field) from exc
            except httpx.TimeoutException as exc:
                raise InvalidInput(f"fetching the URL timed out (url_fetch_timeout_s={timeout_s}, the whole download)",
                                   field=field) from exc
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise InvalidInput(f"fetching the URL failed: {type(exc).__name__}", field=field) from exc
    raise InvalidInput(f"the URL redirected more than {MAX_REDIRECTS} times", field=field)


def _read(resp: httpx.Response, field: str, max_bytes: int) -> bytes:
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
        chunks.append(chunk)
    return b"".join(chunks)
