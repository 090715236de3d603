"""Omni and VL pipelines end to end: API, one worker process per stage, media in, WAV out."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import time
import wave
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.cluster import Cluster, wait_job
from tests.conftest import ARTIFACTS

STAGES = ["qwen2_5_omni.thinker", "qwen2_5_omni.talker", "qwen2_5_omni.token2wav",
          "qwen3_omni.thinker", "qwen3_omni.talker", "qwen3_omni.code2wav", "qwen2_5_vl.generate"]


@pytest.fixture(scope="module")
def omni(settings_env):
    c = Cluster(settings_env, ARTIFACTS / "e2e-logs-omni")
    try:
        started = [c.start_worker(stage) for stage in STAGES]
        c.start_api()
        c.start_reconciler()
        c.wait_workers_ready(started, timeout=240)
        yield c
    finally:
        # Stop every process at once (one by one, their warm shutdowns add up); the jobs are over,
        # so whoever is still shutting down after a short grace is killed.
        for proc in c.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        for proc in c.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        c.stop()


def png_uri(color: str, size=(56, 56)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def wav_uri(seconds: float = 0.8, rate: int = 16000) -> str:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.sin(2 * np.pi * 330 * t) * 16000).astype("<i2").tobytes())
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()


def stage(job: dict, name: str) -> dict:
    return next(s for s in job["stages"] if s["name"] == name)


def download_wav(http, job: dict) -> tuple[int, int]:
    audio = job["outputs"]["audio"]
    assert audio["content_type"] == "audio/wav"
    resp = http.get(audio["url"])
    assert resp.status_code == 200 and resp.headers["content-type"] == "audio/wav"
    assert resp.content[:4] == b"RIFF" and len(resp.content) == audio["bytes"]
    with wave.open(io.BytesIO(resp.content)) as w:
        return w.getframerate(), w.getnframes()


def submit(http, body: dict) -> str:
    resp = http.post("/v1/jobs", json=body)
    assert resp.status_code in (200, 201, 202), resp.text
    return resp.json()["id"]


def test_qwen2_5_omni_text_image_audio_to_text_and_wav(omni):
    with omni.client() as http:
        job_id = submit(http, {
            "pipeline": "qwen2_5_omni",
            "inputs": {"prompt": "What do you see and hear?", "image": png_uri("red"), "audio": wav_uri()},
            "params": {"thinker": {"max_tokens": 6, "seed": 1}, "talker": {"min_tokens": 10, "max_tokens": 10},
                       "token2wav": {"num_steps": 4}},
        })
        job = wait_job(http, job_id, timeout=120)
        assert job["status"] == "succeeded", job
        assert isinstance(job["outputs"]["text"], str)
        assert {s["name"]: s["status"] for s in job["stages"]} == {
            "thinker": "succeeded", "talker": "succeeded", "token2wav": "succeeded"}
        rate, frames = download_wav(http, job)
        assert rate == 24000 and frames == 480 * 10  # 10 codes, 480 samples each


def test_text_only_job_skips_the_speech_stages(omni):
    with omni.client() as http:
        job_id = submit(http, {"pipeline": "qwen2_5_omni",
                               "inputs": {"prompt": "Just text, please.", "modalities": ["text"]},
                               "params": {"thinker": {"max_tokens": 4, "seed": 2}}})
        job = wait_job(http, job_id, timeout=120)
        assert job["status"] == "succeeded", job
        assert stage(job, "thinker")["status"] == "succeeded"
        assert stage(job, "talker")["status"] == "skipped" and stage(job, "token2wav")["status"] == "skipped"
        assert isinstance(job["outputs"]["text"], str) and not job["outputs"].get("audio")


def test_concurrent_omni_jobs_batch_and_keep_their_own_audio(omni):
    n = 8

    def body(i: int) -> dict:
        # Each job asks for its own number of codes, so its WAV length names the job it belongs to.
        return {
            "pipeline": "qwen2_5_omni",
            "inputs": {"prompt": f"job number {i}: say something", **({"image": png_uri("blue")} if i % 2 else {})},
            "params": {"thinker": {"max_tokens": 3 + i % 3, "seed": i},
                       "talker": {"min_tokens": 4 + i, "max_tokens": 4 + i, "seed": i},
                       "token2wav": {"num_steps": 2}},
        }

    with omni.client() as http:
        # Submitted all at once, so they reach the thinker's queue within one batching window.
        with ThreadPoolExecutor(n) as pool:
            ids = list(pool.map(lambda i: submit(http, body(i)), range(n)))
        jobs = [wait_job(http, job_id, timeout=180) for job_id in ids]
        for i, job in enumerate(jobs):
            assert job["status"] == "succeeded", job
            rate, frames = download_wav(http, job)
            assert rate == 24000 and frames == 480 * (4 + i)
        for name in ("thinker", "talker"):
            sizes = [stage(job, name)["batch_size"] for job in jobs]
            assert max(sizes) > 1, (name, sizes)


def test_qwen3_omni_end_to_end(omni):
    with omni.client() as http:
        job_id = submit(http, {
            "pipeline": "qwen3_omni",
            "inputs": {"prompt": "Describe both.", "image": png_uri("green", (64, 64)), "audio": wav_uri(0.5)},
            "params": {"thinker": {"max_tokens": 5, "seed": 3}, "talker": {"min_tokens": 6, "max_tokens": 6}},
        })
        job = wait_job(http, job_id, timeout=120)
        assert job["status"] == "succeeded", job
        rate, frames = download_wav(http, job)
        # 6 frames (max_tokens), 1920 samples each less the causal decoder's tail.
        assert rate == 24000 and frames == 6 * 1920 - 555


def test_qwen2_5_vl_two_images_to_text(omni):
    with omni.client() as http:
        job_id = submit(http, {
            "pipeline": "qwen2_5_vl",
            "inputs": {"prompt": "Compare the images.", "image": png_uri("red"), "image_2": png_uri("blue", (90, 40))},
            "params": {"generate": {"max_tokens": 5, "seed": 4}},
        })
        job = wait_job(http, job_id, timeout=120)
        assert job["status"] == "succeeded", job
        assert isinstance(job["outputs"]["text"], str)
        assert list(job["outputs"]) == ["text"]
