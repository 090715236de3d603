"""GET /v1/jobs/{id}/events reads the job's channel: token deltas live, ids to resume; Prefer: wait."""

from __future__ import annotations

from tests.cluster import wait_job
from tests.sse import events


def _submit(client, prompt="Tell a story", **params):
    resp = client.post("/v1/jobs", json={"pipeline": "chat", "inputs": {"prompt": prompt},
                                         "params": {"max_tokens": 24, "ignore_eos": True, "seed": 3, **params}})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def test_events_stream_token_deltas_that_join_to_the_stored_text(client):
    job_id = _submit(client)
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        got = list(events(resp))
    assert got[0]["retry"].isdigit() and all("retry" not in e for e in got[1:])
    assert all(e.get("id") for e in got)
    kinds = [e["event"] for e in got]
    assert kinds[-1] == "end" and kinds.count("end") == 1
    deltas = [e for e in got if e["event"] == "delta"]
    job = wait_job(client, job_id)
    assert got[-1]["data"]["status"] == "succeeded" == job["status"]
    assert len(deltas) > 1  # streamed while generating, not one lump at the end
    assert all(d["data"]["stage"] == "generate" for d in deltas)
    assert "".join(d["data"]["text"] for d in deltas) == job["outputs"]["text"]
    token_ids = [t for d in deltas for t in d["data"]["token_ids"]]
    assert token_ids == job["stages"][0]["outputs"]["token_ids"]
    assert deltas[-1]["data"]["done"] is True and deltas[-1]["data"]["finish_reason"] == "length"
    # Channel ids grow, so a client can resume after any of them.
    ids = [tuple(map(int, d["id"].split("-"))) for d in deltas]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_last_event_id_resumes_after_the_given_delta(client):
    job_id = _submit(client, prompt="Another story", seed=4)
    wait_job(client, job_id)
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
        first = [e for e in events(resp) if e["event"] == "delta"]
    assert len(first) > 3
    cut = first[2]["id"]
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": cut}) as resp:
        again = list(events(resp))
    resumed = [e for e in again if e["event"] == "delta"]
    assert [e["id"] for e in resumed] == [e["id"] for e in first[3:]]
    # The state is sent again on resume (it is a snapshot), then the end.
    assert again[0]["event"] == "status" and again[-1]["event"] == "end"


def test_events_of_an_unknown_job_are_a_404(client):
    resp = client.get("/v1/jobs/00000000-0000-0000-0000-000000000000/events")
    assert resp.status_code == 404 and resp.json()["error"]["field"] == "id"


def test_prefer_wait_returns_the_finished_job(client):
    resp = client.post("/v1/jobs", headers={"Prefer": "wait=60"},
                       json={"pipeline": "echo", "inputs": {"prompt": "quick"}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "succeeded" and resp.json()["outputs"]["text"]
    assert resp.headers["preference-applied"] == "wait=60"


def test_prefer_wait_answers_202_when_the_job_outlasts_it(client):
    resp = client.post("/v1/jobs", headers={"Prefer": "wait=1"},
                       json={"pipeline": "echo", "inputs": {"prompt": "sleep:6"}})
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] in ("queued", "running")
    assert wait_job(client, resp.json()["id"])["status"] == "succeeded"
