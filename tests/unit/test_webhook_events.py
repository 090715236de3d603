"""Webhook fields of a job: the event filter and the SSRF guard on the URL."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from omnijobs.errors import InvalidInput
from omnijobs.webhooks.events import DEFAULT_FILTER, payload, validate_webhook


def test_default_filter_is_completion_events():
    assert validate_webhook("http://127.0.0.1:9/x", None, frozenset({"127.0.0.1"})) == (
        "http://127.0.0.1:9/x", ["job.succeeded", "job.failed", "job.canceled"])
    assert DEFAULT_FILTER == ["job.succeeded", "job.failed", "job.canceled"]
    assert validate_webhook(None, None, frozenset()) == (None, None)


def test_filter_is_checked_and_normalised():
    url = "http://127.0.0.1:9/x"
    allowed = frozenset({"127.0.0.1"})
    assert validate_webhook(url, ["job.stage_completed", "job.started", "job.started"], allowed)[1] == [
        "job.started", "job.stage_completed"]
    for bad, message in ((["job.done"], "unknown event type 'job.done'"), ([], "non-empty"), ("job.started", "list")):
        with pytest.raises(InvalidInput, match=message) as err:
            validate_webhook(url, bad, allowed)
        assert err.value.field == "webhook_events_filter"
    with pytest.raises(InvalidInput, match="needs a webhook URL"):
        validate_webhook(None, ["job.started"], allowed)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/hook", "http://localhost/hook", "http://10.1.2.3/", "http://192.168.0.10/",
    "http://169.254.169.254/latest/meta-data", "http://[::1]/", "http://0.0.0.0/", "ftp://example.com/",
    "http://[::1", "http://127.0.0.1:99999/", "http://host:abc/", "http://0x7f.1/", "http://user:pw@10.0.0.1/",
])
def test_private_or_odd_targets_are_refused(url):
    with pytest.raises(InvalidInput) as err:
        validate_webhook(url, None, frozenset())
    assert err.value.field == "webhook"


def test_public_address_and_allowed_host_pass():
    assert validate_webhook("https://93.184.215.14/hook", None, frozenset())[0] == "https://93.184.215.14/hook"
    assert validate_webhook("http://127.0.0.1:1/h", None, frozenset({"127.0.0.1"}))[0] == "http://127.0.0.1:1/h"


def test_payload_shape():
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    body = json.loads(payload("job.stage_completed", at, {"id": "j"}, stage="draft"))
    assert body == {"type": "job.stage_completed", "timestamp": "2026-01-02T03:04:05Z", "data": {"id": "j"},
                    "stage": "draft"}
