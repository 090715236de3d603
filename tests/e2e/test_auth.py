"""API keys through HTTP: no key, a revoked key, another key's job, non-admins on admin routes."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.cluster import REPO, wait_job


@pytest.fixture(scope="module")
def two_keys(cluster):
    """Keys A and B (not admins), made through the admin API."""
    made = []
    with cluster.client() as admin:
        for name in ("key-a", "key-b"):
            resp = admin.post("/admin/api/keys", json={"name": name})
            assert resp.status_code == 201, resp.text
            made.append(resp.json())
    return made


def _as(cluster, key: str | None) -> httpx.Client:
    client = httpx.Client(base_url=cluster.api_url, timeout=30)
    if key:
        client.headers["Authorization"] = f"Bearer {key}"
    return client


def test_every_route_but_health_needs_a_key(cluster):
    with _as(cluster, None) as anon:
        assert anon.get("/healthz").status_code == 200
        assert anon.get("/readyz").status_code == 200
        for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/x"),
                             ("POST", "/v1/jobs/x/cancel"), ("GET", "/v1/jobs/x/events"), ("GET", "/v1/pipelines"),
                             ("GET", "/admin"), ("GET", "/admin/api/queues"), ("GET", "/metrics")]:
            resp = anon.request(method, path, json={} if method == "POST" else None)
            assert resp.status_code == 401, (method, path, resp.text)
            assert resp.json()["error"]["code"] == "unauthorized"
            assert resp.headers["www-authenticate"].startswith("Bearer")
    for bad in ("omk_not-a-real-key", "garbage"):
        with _as(cluster, bad) as client:
            assert client.get("/v1/jobs").status_code == 401
    # Another scheme, or the key in the wrong place, is no key.
    resp = httpx.get(f"{cluster.api_url}/v1/jobs", headers={"Authorization": f"Basic {cluster.admin_key['key']}"})
    assert resp.status_code == 401


def test_a_key_sees_and_cancels_only_its_own_jobs(cluster, two_keys):
    key_a, key_b = two_keys
    with _as(cluster, key_a["key"]) as a, _as(cluster, key_b["key"]) as b, cluster.client() as admin:
        done = a.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": "mine"}})
        assert done.status_code == 202, done.text
        done_id = done.json()["id"]
        assert wait_job(a, done_id)["outputs"]["text"] == "say(mine)"
        # Submitted after the first one ended, so the two are not in one batch.
        slow = a.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": "sleep:30"}})
        assert slow.status_code == 202, slow.text
        slow_id = slow.json()["id"]

        for job_id in (done_id, slow_id):
            for resp in (b.get(f"/v1/jobs/{job_id}"), b.post(f"/v1/jobs/{job_id}/cancel"),
                         b.get(f"/v1/jobs/{job_id}/events"), b.get(f"/v1/jobs/{job_id}/outputs/text")):
                assert resp.status_code == 404, resp.text
                assert resp.json()["error"]["message"] == f"no job '{job_id}'"
        # The same 404 as for an id that does not exist: ids are not probeable.
        missing = b.get("/v1/jobs/00000000-0000-0000-0000-000000000000").json()["error"]
        assert b.get(f"/v1/jobs/{done_id}").json()["error"]["code"] == missing["code"]
        b_ids = {j["id"] for j in b.get("/v1/jobs", params={"limit": 100}).json()["data"]}
        a_ids = {j["id"] for j in a.get("/v1/jobs", params={"limit": 100}).json()["data"]}
        assert {done_id, slow_id} <= a_ids and not b_ids & a_ids
        admin_ids = {j["id"] for j in admin.get("/v1/jobs", params={"limit": 100}).json()["data"]}
        assert {done_id, slow_id} <= admin_ids
        assert admin.get(f"/v1/jobs/{done_id}").status_code == 200

        assert a.get(f"/v1/jobs/{slow_id}").json()["status"] in ("queued", "running")  # B's cancel did nothing
        canceled = a.post(f"/v1/jobs/{slow_id}/cancel")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"


def test_non_admin_keys_get_403_on_admin_routes(cluster, two_keys):
    with _as(cluster, two_keys[0]["key"]) as a:
        for method, path in [("GET", "/admin"), ("GET", "/admin/api/queues"), ("GET", "/admin/api/workers"),
                             ("GET", "/admin/api/stats"), ("GET", "/admin/api/jobs"), ("GET", "/admin/api/keys"),
                             ("POST", "/admin/api/jobs/00000000-0000-0000-0000-000000000000/retry"),
                             ("POST", "/admin/api/keys"), ("GET", "/metrics")]:
            resp = a.request(method, path, json={"name": "x"} if method == "POST" else None)
            assert resp.status_code == 403, (method, path, resp.text)
            assert resp.json()["error"]["code"] == "forbidden"


def test_revoked_keys_get_401_by_route_and_by_cli(cluster, two_keys):
    key_b = two_keys[1]
    with cluster.client() as admin, _as(cluster, key_b["key"]) as b:
        assert b.get("/v1/jobs").status_code == 200
        revoked = admin.post(f"/admin/api/keys/{key_b['id']}/revoke")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        resp = b.get("/v1/jobs")
        assert resp.status_code == 401 and "revoked" in resp.json()["error"]["message"]
        listed = {k["id"]: k for k in admin.get("/admin/api/keys").json()["data"]}
        assert listed[key_b["id"]]["revoked_at"] and "key" not in listed[key_b["id"]]
        assert admin.post("/admin/api/keys/key_nope/revoke").status_code == 404

    made = cluster.create_key("cli-key")
    with _as(cluster, made["key"]) as c:
        assert c.get("/v1/jobs").status_code == 200
        cli = [sys.executable, "-m", "omnijobs", "keys"]
        listing = subprocess.run([*cli, "list"], env=cluster.env, cwd=REPO, capture_output=True, text=True,
                                 check=True, timeout=60).stdout
        assert made["id"] in listing and made["key"] not in listing
        out = subprocess.run([*cli, "revoke", made["id"]], env=cluster.env, cwd=REPO, capture_output=True,
                             text=True, check=True, timeout=60).stdout
        assert f"revoked {made['id']}" in out
        assert c.get("/v1/jobs").status_code == 401


def test_webhook_secret_rotates_through_the_admin_api(cluster, two_keys):
    key_a = two_keys[0]
    with cluster.client() as admin:
        resp = admin.post(f"/admin/api/keys/{key_a['id']}/rotate-webhook-secret")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["webhook_secret"].startswith("whsec_") and body["webhook_secret"] != key_a["webhook_secret"]
        assert body["previous_valid_for_s"] > 0
