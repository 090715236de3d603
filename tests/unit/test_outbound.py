"""The guarded outbound client: checks the address it connects to, and ends by a total deadline."""

from __future__ import annotations

import ipaddress
import threading

import httpx
import pytest

from omnijobs.errors import InvalidInput
from omnijobs.netguard import Refused, check_url, is_internal
from omnijobs.outbound import deadline, guarded_client
from tests.slow_server import Trickler


@pytest.fixture()
def trickler():
    server = Trickler()
    yield server
    server.close()


def test_a_trickling_server_cannot_outlast_the_deadline(trickler):
    # Per-read timeout of 5 s is never reached (a byte every 50 ms); the 1 s deadline ends the request.
    with guarded_client(frozenset({"127.0.0.1"}), timeout=5) as client, deadline(1.0):
        with pytest.raises(httpx.TimeoutException):
            client.get(trickler.url)


def test_without_a_deadline_only_the_read_timeout_applies(trickler):
    # The control case: the same server under a plain per-read timeout is still being read after 1.5 s.
    result: list = []

    def run():
        with guarded_client(frozenset({"127.0.0.1"}), timeout=5) as client:
            try:
                client.get(trickler.url)
            except Exception as exc:  # noqa: BLE001 - the server is closed at the end of the test
                result.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(1.5)
    assert worker.is_alive() and not result


def test_the_client_checks_the_address_it_connects_to():
    # No check_url before the call: the connection itself refuses a private address.
    with guarded_client() as client, pytest.raises(Refused, match="private or local"):
        client.get("http://localhost:9/")
    with guarded_client() as client, pytest.raises(Refused, match="private or local"):
        client.get("http://127.0.0.1:9/")


def test_allowed_hosts_may_be_reached(trickler):
    with guarded_client(frozenset({"127.0.0.1"}), timeout=5) as client, deadline(0.5):
        with pytest.raises(httpx.TimeoutException):  # reached (and then timed out), not refused
            client.get(trickler.url)


@pytest.mark.parametrize("address", [
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    "::ffff:127.0.0.1", "64:ff9b::a00:1", "64:ff9b::7f00:1",
])
def test_ipv6_addresses_embedding_a_private_ipv4_are_internal(address):
    assert is_internal(ipaddress.ip_address(address))


def test_6to4_of_a_public_address_is_not_internal():
    assert not is_internal(ipaddress.ip_address("2002:5db8:d822::"))  # 93.184.216.34


def test_6to4_literal_urls_are_refused():
    with pytest.raises(InvalidInput, match="private or local"):
        check_url("http://[2002:7f00:1::]/hook", field="webhook")
