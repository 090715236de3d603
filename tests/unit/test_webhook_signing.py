"""Signatures made here verify with the `standardwebhooks` package, as a receiver would check them."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from omnijobs.webhooks import signing
from omnijobs.webhooks.events import message_id, payload


def test_receiver_library_verifies_our_headers():
    secret = signing.new_secret()
    body = payload("job.succeeded", datetime.now(UTC), {"id": "j1"})
    headers = signing.headers("msg_1", int(time.time()), body, [secret])
    assert Webhook(secret).verify(body, headers) == json.loads(body)


def test_every_active_secret_signs_during_rotation():
    old, new = signing.new_secret(), signing.new_secret()
    body = '{"type":"job.failed"}'
    headers = signing.headers("msg_2", int(time.time()), body, [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)  # a receiver still on the old secret accepts it
    Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)


def test_tampered_body_or_stale_timestamp_is_refused():
    secret = signing.new_secret()
    body = '{"type":"job.succeeded"}'
    headers = signing.headers("msg_3", int(time.time()), body, [secret])
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("succeeded", "failed"), headers)
    old = signing.headers("msg_3", int(time.time()) - 3600, body, [secret])
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, old)


def test_signature_matches_the_spec_by_hand():
    # Standard Webhooks: base64(HMAC-SHA256(key=base64decode(secret), "id.timestamp.body")).
    import base64
    import hashlib
    import hmac

    key = b"0123456789abcdef0123456789abcdef"
    secret = "whsec_" + base64.b64encode(key).decode()
    expected = base64.b64encode(hmac.new(key, b"msg_x.1700000000.{}", hashlib.sha256).digest()).decode()
    assert signing.signature("msg_x", 1700000000, "{}", secret) == f"v1,{expected}"


def test_bad_secrets_and_ids():
    with pytest.raises(ValueError, match="whsec_"):
        signing.secret_bytes("not-a-secret")
    with pytest.raises(ValueError, match="no webhook secret"):
        signing.headers("msg", 1, "{}", [])
    assert message_id("6f1c2a4e-0000-4000-8000-000000000001") == "msg_6f1c2a4e000040008000000000000001"
