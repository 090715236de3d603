"""Hostile input found by attack: each case once answered 500 (or was accepted and broke later).

Every one must be a 4xx with the error object naming the field, and write nothing.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, func, select

from omnijobs.store.tables import Job, StageRun, WebhookDelivery

# Raw bodies: a lone surrogate cannot be encoded by a JSON library, only escaped by hand.
SURROGATES = [
    ("in the prompt", b'{"pipeline": "chat", "inputs": {"prompt": "a\\ud800b"}}', "inputs.prompt"),
    ("in a metadata value", b'{"pipeline": "chat", "inputs": {"prompt": "x"}, "metadata": {"k": "\\udfff"}}',
     "metadata.k"),
    ("in a metadata key", b'{"pipeline": "chat", "inputs": {"prompt": "x"}, "metadata": {"\\ud800": 1}}',
     "metadata"),
    ("in a params key", b'{"pipeline": "chat", "inputs": {"prompt": "x"}, "params": {"\\ud800": 1}}',
     "params"),
    ("in an input name", b'{"pipeline": "chat", "inputs": {"prompt": "x", "\\ud800": "y"}}', "inputs"),
    ("in the pipeline name", b'{"pipeline": "\\ud800", "inputs": {"prompt": "x"}}', "pipeline"),
]
NON_FINITE = [
    ("NaN in metadata", b'{"pipeline": "chat", "inputs": {"prompt": "x"}, "metadata": {"score": NaN}}',
     "metadata.score"),
    ("Infinity in a json input", b'{"pipeline": "chat", "inputs": {"prompt": "x", "history": [{"n": Infinity}]}}',
     "inputs.history.0.n"),
    ("-Infinity as a param", b'{"pipeline": "chat", "inputs": {"prompt": "x"}, "params": {"temperature": -Infinity}}',
     "params.temperature"),
]
JSON = {"content-type": "application/json"}


def _counts(url: str) -> tuple[int, int, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        counts = tuple(conn.scalar(select(func.count()).select_from(t)) for t in (Job, StageRun, WebhookDelivery))
    engine.dispose()
    return counts


@pytest.fixture()
def nothing_written(postgres_url):
    before = _counts(postgres_url)
    yield
    assert _counts(postgres_url) == before


@pytest.mark.parametrize("name,body,field", SURROGATES + NON_FINITE, ids=[c[0] for c in SURROGATES + NON_FINITE])
def test_unstorable_values_are_422_naming_the_field(client, nothing_written, name, body, field):
    resp = client.post("/v1/jobs", content=body, headers=JSON)
    assert resp.status_code in (404, 422), resp.text  # an unknown pipeline name is a 404, as any other
    error = resp.json()["error"]
    assert error["field"] == field, error
    assert error["message"] and error["code"]


@pytest.mark.parametrize("path", ["/v1/jobs", "/admin/api/jobs"])
def test_nul_in_a_list_filter_is_422(client, path):
    resp = client.get(path, params={"pipeline": "\x00"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == "pipeline"


@pytest.mark.parametrize("body,headers,says", [
    (b"{not json", JSON, "not valid JSON"),
    (b'{"pipeline": "chat"', JSON, "not valid JSON"),
    (b"\xff\xfe\x00{", JSON, "not valid JSON"),
    (b"pipeline=chat", {"content-type": "text/plain"}, "must be JSON"),
    (b"pipeline=chat", {"content-type": "application/x-www-form-urlencoded"}, "must be JSON"),
    (b"[" * 100_000 + b"]" * 100_000, JSON, "nested too deeply"),
    (b'{"pipeline": "chat", "inputs": {"prompt": "x"}, "metadata": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001,
     JSON, "nested too deeply"),
], ids=["garbage", "truncated", "not utf-8", "text/plain", "form", "deep array", "deep metadata"])
def test_bodies_that_are_not_json_are_400_saying_why(client, nothing_written, body, headers, says):
    resp = client.post("/v1/jobs", content=body, headers=headers)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert says in error["message"], error
    assert error["code"] == "invalid_json"


def test_json_nested_past_the_value_limit_is_422_naming_the_field(client, nothing_written):
    deep = {"pipeline": "chat", "inputs": {"prompt": "x"}}
    node = deep["metadata"] = {}
    for _ in range(40):
        node["a"] = {}
        node = node["a"]
    resp = client.post("/v1/jobs", json=deep)
    assert resp.status_code == 422, resp.text
    assert "nested" in resp.json()["error"]["message"]
    assert resp.json()["error"]["field"].startswith("metadata.a.a")


def test_oversized_metadata_is_refused_with_its_limit(client, nothing_written):
    resp = client.post("/v1/jobs", json={"pipeline": "chat", "inputs": {"prompt": "x"},
                                         "metadata": {"blob": "x" * 20_000}})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["field"] == "metadata" and "metadata_max_bytes" in error["message"]


@pytest.mark.parametrize("url", ["http://1.2.3.4/a\\u0001b", "http://1.2.3.4/a b", "http://1.2.3.4/\\u007f",
                                 "http://1.2.3.4/\\ud800"])
def test_webhook_url_with_a_control_character_is_refused_at_submit(client, nothing_written, url):
    body = b'{"pipeline": "chat", "inputs": {"prompt": "x"}, "webhook": "' + url.encode() + b'"}'
    resp = client.post("/v1/jobs", content=body, headers=JSON)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == "webhook"


def test_job_urls_ignore_an_untrusted_host_header(client):
    job_id = client.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": "host"}}).json()["id"]
    trusted = client.get(f"/v1/jobs/{job_id}").json()["urls"]["get"]
    assert trusted == f"{client.base_url}/v1/jobs/{job_id}"
    resp = client.get(f"/v1/jobs/{job_id}", headers={"Host": "attacker.example"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["urls"]["get"] == f"/v1/jobs/{job_id}"
    assert "attacker" not in resp.text
