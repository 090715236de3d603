"""The outbound URL guard: private, loopback and malformed targets are refused as 4xx errors."""

from __future__ import annotations

import pytest

from omnijobs.errors import InvalidInput
from omnijobs.netguard import check_url


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://10.1.2.3/", "http://192.168.0.9:8080/", "http://169.254.169.254/latest",
    "http://[::1]/", "http://0.0.0.0/", "http://[fe80::1]/",
])
def test_internal_addresses_are_refused(url):
    with pytest.raises(InvalidInput, match="private or local") as info:
        check_url(url, field="webhook")
    assert info.value.field == "webhook"


@pytest.mark.parametrize("url, why", [
    ("ftp://93.184.216.34/", "scheme"), ("file:///etc/passwd", "scheme"), ("http:///nohost", "no host"),
    ("http://[::1/x", "malformed"), ("http://93.184.216.34:99999/", "malformed"),
])
def test_bad_urls_are_refused(url, why):
    with pytest.raises(InvalidInput, match=why):
        check_url(url, field="inputs.image")


def test_public_address_and_allowed_hosts_pass():
    assert check_url("https://93.184.216.34/x", field="w") == "https://93.184.216.34/x"
    assert check_url("http://127.0.0.1:9/x", field="w", allowed_hosts=frozenset({"127.0.0.1"}))
