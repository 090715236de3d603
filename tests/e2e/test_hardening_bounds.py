"""Bounds on the work and memory one request can cost: found by attack, each once cost seconds of
CPU, gigabytes of memory or a 500."""

from __future__ import annotations

import threading

import psutil
import pytest

from tests.cluster import wait_job

MiB = 1024 * 1024


def _key(cluster, name: str) -> dict[str, str]:
    with cluster.client() as admin:
        made = admin.post("/admin/api/keys", json={"name": name})
    assert made.status_code == 201, made.text
    return {"Authorization": f"Bearer {made.json()['key']}"}


def _rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


# ------------------------------------------------------------------ GET /v1/jobs


@pytest.fixture(scope="module")
def big_jobs(cluster):
    """12 jobs of one key, each with a prompt near the body limit (8 MiB), run to the end."""
    headers = _key(cluster, "bounds-lists")
    prompt = "x" * (7 * MiB)
    ids = []
    with cluster.client(headers=headers, timeout=120) as http:
        for i in range(12):
            resp = http.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": f"{i}{prompt}"},
                                               "metadata": {"n": i}})
            assert resp.status_code == 202, resp.text[:500]
            ids.append(resp.json()["id"])
        for job_id in ids:
            assert wait_job(http, job_id, timeout=180)["status"] == "succeeded"
    return headers, ids


def test_a_list_of_jobs_with_large_inputs_stays_small(cluster, big_jobs):
    headers, ids = big_jobs
    with cluster.client(headers=headers, timeout=120) as http:
        resp = http.get("/v1/jobs", params={"limit": 100})
        assert resp.status_code == 200, resp.text[:500]
        assert len(resp.content) < 64 * 1024  # 12 jobs of 7 MiB inputs each: summaries only
        body = resp.json()
        assert [j["id"] for j in body["data"]] == list(reversed(ids))
        assert body["next_cursor"] is None
        first = body["data"][0]
        assert "inputs" not in first and "outputs" not in first and "params" not in first
        assert first["metadata"] == {"n": 11} and first["status"] == "succeeded"
        assert first["stages"][0]["name"] == "say" and first["stages"][0]["status"] == "succeeded"
        assert first["progress"]["stages_done"] == 1
        # The whole job is behind its own URL.
        whole = http.get(first["urls"]["get"])
        assert whole.status_code == 200
        assert whole.json()["inputs"]["prompt"] == "11" + "x" * (7 * MiB)


def test_concurrent_lists_keep_the_api_memory_bounded(cluster, big_jobs):
    headers, _ = big_jobs
    pid = cluster.procs["api"].pid
    before = _rss(pid)
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss(pid))
            stop.wait(0.02)

    sizes, errors = [], []

    def lists():
        try:
            with cluster.client(headers=headers, timeout=120) as http:
                for _ in range(3):
                    resp = http.get("/v1/jobs", params={"limit": 100})
                    sizes.append((resp.status_code, len(resp.content)))
        except Exception as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=lists) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    sampler.join()
    assert not errors, errors
    assert len(sizes) == 18 and all(code == 200 and size < 64 * 1024 for code, size in sizes), sizes
    # Before summaries, 6 concurrent lists of these jobs took the API from ~0.2 to 2.2 GB.
    assert peak[0] - before < 150 * MiB, (before, peak[0])


def test_a_page_stops_within_its_byte_budget_with_a_cursor(cluster):
    # 100 jobs of 16 KB metadata each (the metadata limit) are 1.6 MB: over the page budget.
    from api.schemas import LIST_PAGE_MAX_BYTES

    headers = _key(cluster, "bounds-budget")
    ids = []
    with cluster.client(headers=headers, timeout=60) as http:
        for i in range(80):
            resp = http.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": str(i)},
                                               "metadata": {"pad": "m" * 16_000}})
            assert resp.status_code == 202, resp.text[:300]
            ids.append(resp.json()["id"])
        seen, cursor, pages = [], None, 0
        while True:
            resp = http.get("/v1/jobs", params={"limit": 100, **({"cursor": cursor} if cursor else {})})
            assert resp.status_code == 200, resp.text[:300]
            assert len(resp.content) < LIST_PAGE_MAX_BYTES + 64 * 1024
            body = resp.json()
            seen += [j["id"] for j in body["data"]]
            pages += 1
            cursor = body["next_cursor"]
            if not cursor:
                break
        assert pages >= 2  # 80 × 16 KB does not fit one page
        assert seen == list(reversed(ids))  # every job once, in order, across the early-stopped pages


# ------------------------------------------------------------------ POST /v1/files


def _cpu_s(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)])


def _multipart(parts: list[bytes], boundary: bytes = b"b0undary") -> tuple[bytes, dict[str, str]]:
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts) + b"--" + boundary + b"--\r\n"
    return body, {"content-type": f"multipart/form-data; boundary={boundary.decode()}"}


@pytest.mark.parametrize("parts", [
    [b'Content-Disposition: form-data; name="f"\r\n\r\nx'] * 200_000,
    [b'Content-Disposition: form-data; name="file"; filename="a.png"\r\nX-Pad: ' + b"p" * (4 * MiB) + b"\r\n\r\nx"],
    [b"X-H: v\r\n" * 100_000 + b'Content-Disposition: form-data; name="file"\r\n\r\nx'],
], ids=["200k parts", "4 MiB header", "100k headers"])
def test_hostile_multipart_bodies_are_refused_cheaply(cluster, parts):
    body, headers = _multipart(parts)
    pid = cluster.procs["api"].pid
    before = _cpu_s(pid)
    with cluster.client(timeout=120) as http:
        resp = http.post("/v1/files", content=body, headers=headers)
        assert resp.status_code == 422, resp.text[:500]
        error = resp.json()["error"]
        assert error["field"] == "file" and ("parts" in error["message"] or "header" in error["message"]), error
        # Parsing such a body to its end cost the API 9-19 s of CPU; refused after a few parts it is
        # well under one (the bound is loose: it counts the request's whole handling).
        assert _cpu_s(pid) - before < 1.5
        assert http.get("/healthz").status_code == 200


def test_an_uploaded_mp4_of_a_million_boxes_is_a_clear_422(cluster):
    from tests import media_samples as samples

    flood = samples.mp4() + b"\x00\x00\x00\x08free" * 1_000_000  # 8 MB
    pid = cluster.procs["api"].pid
    before = _cpu_s(pid)
    with cluster.client(timeout=120) as http:
        resp = http.post("/v1/files", files={"file": ("flood.mp4", flood, "video/mp4")})
        assert resp.status_code == 422, resp.text[:500]
        error = resp.json()["error"]
        assert error["field"] == "file" and "top-level boxes" in error["message"], error
    # Walking a million boxes cost 2-6 s of CPU; the bound stops after ten thousand.
    assert _cpu_s(pid) - before < 1.5


# ------------------------------------------------------------------ a full artifact disk


@pytest.fixture()
def full_disk(tmp_path):
    """A 1 MiB tmpfs as the artifacts folder (the tests run as root; a failed mount fails the test)."""
    import subprocess

    folder = tmp_path / "artifacts"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_an_upload_to_a_full_artifact_disk_is_507_and_leaves_nothing(settings_env, tmp_path, full_disk):
    from sqlalchemy import create_engine, func, select

    from omnijobs.store.tables import InputFile
    from tests import media_samples as samples
    from tests.cluster import isolated_cluster
    from tests.conftest import ARTIFACTS

    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    with isolated_cluster(settings_env, ARTIFACTS / "e2e-logs" / "full-disk", {}, pipelines,
                          OMNIJOBS_ARTIFACTS_DIR=str(full_disk)) as c, c.client(timeout=60) as http:
        big = samples.wav(800_000)  # 1.6 MB of audio: more than the disk holds
        resp = http.post("/v1/files", files={"file": ("big.wav", big, "audio/wav")})
        assert resp.status_code == 507, resp.text[:500]
        assert resp.json()["error"]["code"] == "insufficient_storage"
        assert "storage is full" in resp.json()["error"]["message"]
        assert resp.headers["Retry-After"]
        # Nothing half-written: no partial file on the disk, no row naming one.
        assert [p for p in full_disk.rglob("*") if p.is_file()] == []
        engine = create_engine(c.env["OMNIJOBS_DATABASE_URL"])
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(InputFile)) == 0
        engine.dispose()
        # The disk has room again for what fits: the refusal left nothing holding space.
        small = http.post("/v1/files", files={"file": ("small.wav", samples.wav(16_000), "audio/wav")})
        assert small.status_code == 201, small.text[:500]
        assert http.get("/healthz").status_code == 200
