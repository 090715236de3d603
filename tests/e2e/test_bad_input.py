"""Every bad request gets a 4xx with the error object, and writes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, func, select

from omnijobs.store.tables import Job, StageRun

CASES = [
    ("unknown pipeline", {"pipeline": "nope", "inputs": {"prompt": "x"}}, 404, "pipeline"),
    ("missing input", {"pipeline": "chat", "inputs": {}}, 422, "inputs.prompt"),
    ("wrong type", {"pipeline": "chat", "inputs": {"prompt": 42}}, 422, "inputs.prompt"),
    ("unknown input", {"pipeline": "chat", "inputs": {"prompt": "x", "image": "y"}}, 422, "inputs.image"),
    ("too long text", {"pipeline": "chat", "inputs": {"prompt": "x" * 32001}}, 422, "inputs.prompt"),
    ("unknown param", {"pipeline": "chat", "inputs": {"prompt": "x"}, "params": {"beam": 2}}, 422, "params.beam"),
    ("param out of bounds", {"pipeline": "chat", "inputs": {"prompt": "x"}, "params": {"max_tokens": 0}}, 422,
     "params.max_tokens"),
    ("param wrong type", {"pipeline": "chat", "inputs": {"prompt": "x"}, "params": {"temperature": "hot"}}, 422,
     "params.temperature"),
    ("unknown field", {"pipeline": "chat", "inputs": {"prompt": "x"}, "colour": 1}, 422, "colour"),
    ("inputs not an object", {"pipeline": "chat", "inputs": ["x"]}, 422, "inputs"),
    ("priority out of range", {"pipeline": "chat", "inputs": {"prompt": "x"}, "priority": 11}, 422, "priority"),
    ("NUL in text", {"pipeline": "chat", "inputs": {"prompt": "a\u0000b"}}, 422, "inputs.prompt"),
]


def _counts(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        counts = (conn.scalar(select(func.count()).select_from(Job)),
                  conn.scalar(select(func.count()).select_from(StageRun)))
    engine.dispose()
    return counts


@pytest.mark.parametrize("name,body,status,field", CASES, ids=[c[0] for c in CASES])
def test_bad_job_request(client, postgres_url, name, body, status, field):
    before = _counts(postgres_url)
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["field"] == field and error["message"] and error["code"]
    assert _counts(postgres_url) == before


def test_malformed_and_oversized_bodies(client, postgres_url):
    before = _counts(postgres_url)
    bad_json = client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]["message"]
    huge = client.post("/v1/jobs", content=b'{"pipeline": "chat", "inputs": {"prompt": "' + b"x" * (9 * 2**20) + b'"}}',
                       headers={"content-type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"
    assert client.get("/v1/jobs/not-a-uuid").status_code == 404
    assert client.get("/v1/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert _counts(postgres_url) == before
