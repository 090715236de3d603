"""Diffusion pipelines end to end: API, one worker process per stage, PNG / MP4 / WAV downloads.

Qwen-Image runs as three workers (encode, denoise, decode). Tensors go through shared memory;
the last test swaps the denoise worker for one writing to a real S3 server, so the same job's
latents go through S3.
"""

from __future__ import annotations

import base64
import io
import time
import uuid
import wave
from datetime import UTC, datetime

import av
import pytest
import sqlalchemy as sa
from PIL import Image

from tests.cluster import Cluster, wait_job
from tests.conftest import ARTIFACTS
from tests.procs import stop_all
from tests.s3server import run_s3_server

STAGES = ["qwen_image.encode", "qwen_image.denoise", "qwen_image.decode", "qwen_image_edit.edit",
          "qwen_image_layered.decompose",
          "z_image_turbo.generate", "longcat_image.generate", "wan2_2_t2v.generate", "stable_audio.generate"]


@pytest.fixture(scope="module")
def diffusion(settings_env, settings, tmp_path_factory):
    with run_s3_server(tmp_path_factory.mktemp("s3")) as s3:
        # Every process can read s3:// references; only the workers told so write there.
        env = {**settings_env, "OMNIJOBS_ARTIFACTS": "shm", "OMNIJOBS_S3_ENDPOINT_URL": s3.endpoint,
               "OMNIJOBS_S3_ACCESS_KEY": s3.access_key, "OMNIJOBS_S3_SECRET_KEY": s3.secret_key,
               "OMNIJOBS_S3_BUCKET": f"diffusion-{uuid.uuid4().hex[:8]}"}
        c = Cluster(env, ARTIFACTS / "e2e-logs-diffusion")
        s3_workers = Cluster({**env, "OMNIJOBS_ARTIFACTS": "s3"}, ARTIFACTS / "e2e-logs-diffusion-s3")
        try:
            started = [c.start_worker(stage) for stage in STAGES]
            c.start_api()
            c.start_reconciler()
            c.wait_workers_ready(started, timeout=240)
            # The S3 test swaps in a denoise worker that writes to S3.
            yield c, s3_workers
        finally:
            # Idle workers spend seconds in warm shutdown; nothing is left to finish at teardown.
            stop_all([*c.procs.values(), *s3_workers.procs.values()], grace_s=5)
            s3_workers.stop()
            c.stop()


@pytest.fixture(scope="module")
def db(settings_env):
    engine = sa.create_engine(settings_env["OMNIJOBS_DATABASE_URL"])
    yield engine
    engine.dispose()


def artifact_uri(db, job_id: str, stage: str, port: str) -> str:
    """Where a stage wrote a tensor (the API does not show locations to clients)."""
    with db.connect() as conn:
        outputs = conn.execute(sa.text("SELECT outputs FROM stage_runs WHERE job_id = :j AND stage = :s"),
                               {"j": job_id, "s": stage}).scalar_one()
    return outputs[port]["artifact"]


def submit(http, pipeline: str, inputs: dict, params: dict | None = None) -> str:
    resp = http.post("/v1/jobs", json={"pipeline": pipeline, "inputs": inputs, "params": params or {}})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def download(http, job: dict, name: str, content_type: str) -> bytes:
    out = job["outputs"][name]
    assert out["content_type"] == content_type
    resp = http.get(out["url"])
    assert resp.status_code == 200 and resp.headers["content-type"] == content_type
    assert len(resp.content) == out["bytes"]
    return resp.content


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def stage(job: dict, name: str) -> dict:
    return next(s for s in job["stages"] if s["name"] == name)


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


def wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def png_uri(size=(64, 32), mode="RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, size, (30, 120, 200, 160)[:len(mode)]).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_every_pipeline_end_to_end(diffusion, db):
    cluster = diffusion[0]
    with cluster.client() as http:
        ids = {
            "qwen_image": submit(http, "qwen_image", {"prompt": "a lighthouse"},
                                 {"seed": 1, "height": 48, "negative_prompt": "fog"}),
            "qwen_image_edit": submit(http, "qwen_image_edit", {"image": png_uri(), "prompt": "paint it red"},
                                      {"seed": 1}),
            "qwen_image_layered": submit(http, "qwen_image_layered",
                                         {"image": png_uri(mode="RGBA"), "prompt": "a blue card"},
                                         {"seed": 1, "layers": 3}),
            "z_image_turbo": submit(http, "z_image_turbo", {"prompt": "a lighthouse"}, {"seed": 1}),
            "longcat_image": submit(http, "longcat_image", {"prompt": "a lighthouse"}, {"seed": 1}),
            "wan2_2_t2v": submit(http, "wan2_2_t2v", {"prompt": "waves"}, {"seed": 1, "num_frames": 9}),
            "stable_audio": submit(http, "stable_audio", {"prompt": "rain"}, {"seed": 1, "seconds": 1.5}),
        }
        jobs = {name: wait_job(http, job_id, timeout=120) for name, job_id in ids.items()}
        for name, job in jobs.items():
            assert job["status"] == "succeeded", (name, job)

        assert png_size(download(http, jobs["qwen_image"], "image", "image/png")) == (32, 48)
        # 2:1 condition image at the pipeline's 4096-pixel condition area: 96x32.
        assert png_size(download(http, jobs["qwen_image_edit"], "image", "image/png")) == (96, 32)
        layers = Image.open(io.BytesIO(download(http, jobs["qwen_image_layered"], "layers", "image/png")))
        assert layers.n_frames == 3 and layers.mode == "RGBA" and layers.size == (96, 32)
        assert png_size(download(http, jobs["z_image_turbo"], "image", "image/png")) == (32, 32)
        assert png_size(download(http, jobs["longcat_image"], "image", "image/png")) == (32, 32)

        with av.open(io.BytesIO(download(http, jobs["wan2_2_t2v"], "video", "video/mp4"))) as video:
            assert video.streams.video[0].codec_context.name == "h264"
            assert sum(1 for _ in video.decode(video=0)) == 9

        with wave.open(io.BytesIO(download(http, jobs["stable_audio"], "audio", "audio/wav"))) as clip:
            assert clip.getframerate() == 8000 and clip.getnframes() == 12000

    # Three stages on three workers; embeddings and latents went through shared memory.
    qwen = jobs["qwen_image"]
    assert len({stage(qwen, s)["worker"] for s in ("encode", "denoise", "decode")}) == 3
    assert artifact_uri(db, ids["qwen_image"], "encode", "embeds").startswith("shm://")
    assert artifact_uri(db, ids["qwen_image"], "denoise", "latents").startswith("shm://")


def test_same_seed_same_png_and_params_checked(diffusion):
    cluster = diffusion[0]
    with cluster.client() as http:
        ids = [submit(http, "qwen_image", {"prompt": "a red kite"}, {"seed": s}) for s in (5, 5, 6)]
        images = [download(http, wait_job(http, i, timeout=60), "image", "image/png") for i in ids]
        assert images[0] == images[1] and images[0] != images[2]

        bad = http.post("/v1/jobs", json={"pipeline": "wan2_2_t2v", "inputs": {"prompt": "x"},
                                          "params": {"num_frames": 6}})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "params.num_frames"
        bad = http.post("/v1/jobs", json={"pipeline": "qwen_image", "inputs": {"prompt": "x"},
                                          "params": {"height": 4096}})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "params.height"


def test_compatible_jobs_batch_and_another_size_is_not_blocked(diffusion):
    cluster = diffusion[0]
    with cluster.client() as http:
        # A long denoise holds the worker while the next jobs queue up behind it; canceling it
        # then lets the worker pull them together.
        blocker = submit(http, "qwen_image", {"prompt": "wait"},
                         {"height": 1024, "width": 1024, "num_inference_steps": 100, "seed": 1})
        wait_for(lambda: stage(http.get(f"/v1/jobs/{blocker}").json(), "denoise")["progress"])
        same = [submit(http, "qwen_image", {"prompt": f"boat {i}"}, {"seed": i}) for i in range(6)]
        other = submit(http, "qwen_image", {"prompt": "boat"}, {"height": 64, "width": 48, "seed": 9})
        for job_id in [*same, other]:
            wait_for(lambda job_id=job_id: stage(http.get(f"/v1/jobs/{job_id}").json(), "encode")["status"]
                     == "succeeded")
        assert http.post(f"/v1/jobs/{blocker}/cancel").status_code == 200
        jobs = [wait_job(http, i, timeout=60) for i in [*same, other]]
        assert all(j["status"] == "succeeded" for j in jobs), jobs
        assert png_size(download(http, jobs[6], "image", "image/png")) == (48, 64)
    six, odd = [stage(j, "denoise") for j in jobs[:6]], stage(jobs[6], "denoise")
    assert max(s["batch_size"] for s in six) > 1
    # The other size rode in a batch with the six (as its own group), not after them.
    assert odd["batch_id"] in {s["batch_id"] for s in six}


def test_cancel_stops_a_running_denoise(diffusion):
    cluster = diffusion[0]
    steps = 100
    with cluster.client() as http:
        job_id = submit(http, "qwen_image", {"prompt": "a storm"},
                        {"height": 1024, "width": 1024, "num_inference_steps": steps, "seed": 3})
        seen = []  # (time, step) while denoising: progress is visible in GET /v1/jobs/{id}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (len(seen) < 2 or seen[-1][1] == seen[0][1]):
            progress = stage(http.get(f"/v1/jobs/{job_id}").json(), "denoise")["progress"]
            if progress and progress.get("step", 0) >= 1:
                assert progress["steps"] == steps
                seen.append((time.monotonic(), progress["step"]))
            time.sleep(0.05)
        (t0, s0), (t1, s1) = seen[0], seen[-1]
        assert s0 < s1 < steps
        remaining_s = (steps - s1) * (t1 - t0) / (s1 - s0)

        canceled_at = datetime.now(UTC)
        canceled = http.post(f"/v1/jobs/{job_id}/cancel")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        # The denoise worker stops between steps and takes the next job long before the canceled
        # loop would have ended.
        quick = wait_job(http, submit(http, "qwen_image", {"prompt": "calm"}, {"seed": 1}), timeout=60)
        assert quick["status"] == "succeeded"
        waited = (when(stage(quick, "denoise")["started_at"]) - canceled_at).total_seconds()
        assert waited < remaining_s / 2, (waited, remaining_s)

        job = http.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "canceled" and stage(job, "denoise")["status"] == "canceled"
        assert stage(job, "decode")["status"] == "canceled"


def test_latents_through_s3(diffusion, db):
    cluster, s3_workers = diffusion
    cluster.kill("worker-qwen_image.denoise")
    s3_workers.wait_workers_ready([s3_workers.start_worker("qwen_image.denoise")], timeout=240)
    with cluster.client() as http:
        job_id = submit(http, "qwen_image", {"prompt": "a lighthouse"}, {"seed": 1, "height": 48})
        job = wait_job(http, job_id, timeout=60)
        assert job["status"] == "succeeded", job
        assert png_size(download(http, job, "image", "image/png")) == (32, 48)
    assert artifact_uri(db, job_id, "encode", "embeds").startswith("shm://")
    assert artifact_uri(db, job_id, "denoise", "latents").startswith("s3://")
