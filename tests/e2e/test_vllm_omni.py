"""Omni jobs with the thinker on vLLM, end to end through HTTP: text, image and audio in, text and WAV out.

The thinker workers run in the vLLM environment (.venv-vllm, built by tests/vllm_env.sh) and host
the shipped pipelines' thinker kinds on vLLM (OMNIJOBS_AR_ENGINE=auto); their hidden states go to
the talker workers, which stay on transformers in the main environment, as do the speech decoders.
The pipelines are the shipped files under names of their own, so no other worker takes their runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from omnijobs.pipelines.registry import BUILTIN_DIR
from tests.cluster import REPO, isolated_cluster, wait_job
from tests.conftest import ARTIFACTS
from tests.e2e.test_omni import download_wav, png_uri, stage, submit, wav_uri

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
# copy name -> shipped pipeline
PIPELINES = {"vllm_qwen2_5_omni": "qwen2_5_omni", "vllm_qwen3_omni": "qwen3_omni"}
SPEECH_STAGES = {"vllm_qwen2_5_omni": ["talker", "token2wav"], "vllm_qwen3_omni": ["talker", "code2wav"]}


def pipeline_copy(shipped: str, name: str) -> str:
    text = (BUILTIN_DIR / f"{shipped}.yaml").read_text()
    assert text.startswith(f"name: {shipped}\n")
    return text.replace(f"name: {shipped}\n", f"name: {name}\n", 1)


def start_vllm_worker(cluster, stage_ref: str):
    assert VLLM_PYTHON.exists(), "the vLLM environment is missing: run tests/vllm_env.sh (tests/run.sh does)"
    name = f"vllm-{stage_ref}"
    log_path = cluster.log_dir / f"{name}.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    env = {**cluster.env, "OMNIJOBS_AR_ENGINE": "auto", "HF_HUB_OFFLINE": "1",
           "VLLM_CACHE_ROOT": str(ARTIFACTS / "vllm-cache")}
    cluster.procs[name] = subprocess.Popen(
        [str(VLLM_PYTHON), "-m", "omnijobs", "worker", "--stage", stage_ref], env=env, cwd=REPO,
        stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    return cluster.procs[name], log_path, offset


@pytest.fixture(scope="module")
def vomni(settings_env, tmp_path_factory):
    pipelines = {name: pipeline_copy(shipped, name) for name, shipped in PIPELINES.items()}
    with isolated_cluster(settings_env, ARTIFACTS / "e2e-vllm-omni-logs", pipelines,
                          tmp_path_factory.mktemp("vllm-omni-pipelines")) as c:
        started = [start_vllm_worker(c, f"{name}.thinker") for name in PIPELINES]
        started += [c.start_worker(f"{name}.{s}") for name, stages in SPEECH_STAGES.items() for s in stages]
        c.wait_workers_ready(started, timeout=600)
        yield c
        stop_all_at_once(c)


def stop_all_at_once(cluster, grace_s: float = 5) -> None:
    """SIGTERM every process together (one by one, their shutdowns add up); kill what outlives the grace."""
    for proc in cluster.procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in cluster.procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_qwen2_5_omni_with_the_thinker_on_vllm_answers_in_text_and_speech(vomni):
    with vomni.client() as http:
        job_id = submit(http, {
            "pipeline": "vllm_qwen2_5_omni",
            "inputs": {"prompt": "What do you see and hear?", "image": png_uri("red"), "audio": wav_uri()},
            "params": {"thinker": {"max_tokens": 6, "seed": 1}, "talker": {"min_tokens": 10, "max_tokens": 10},
                       "token2wav": {"num_steps": 4}},
        })
        job = wait_job(http, job_id, timeout=300)
        workers = http.get("/admin/api/workers").json()["data"]
        assert job["status"] == "succeeded", job
        assert {s["name"]: s["status"] for s in job["stages"]} == {
            "thinker": "succeeded", "talker": "succeeded", "token2wav": "succeeded"}
        assert isinstance(job["outputs"]["text"], str) and job["outputs"]["text"]
        rate, frames = download_wav(http, job)
    assert rate == 24000 and frames == 480 * 10  # 10 codes, 480 samples each
    engines = {w["stage"]: w["engine"] for w in workers if w.get("stage", "").startswith("vllm_qwen2_5_omni.")}
    assert engines == {"vllm_qwen2_5_omni.thinker": "vllm_omni_thinker",
                       "vllm_qwen2_5_omni.talker": "qwen2_5_omni_talker",
                       "vllm_qwen2_5_omni.token2wav": "qwen2_5_omni_token2wav"}, workers


def test_a_text_only_job_ends_at_the_vllm_thinker(vomni):
    with vomni.client() as http:
        job_id = submit(http, {"pipeline": "vllm_qwen2_5_omni",
                               "inputs": {"prompt": "Just text, please.", "modalities": ["text"]},
                               "params": {"thinker": {"max_tokens": 4, "seed": 2}}})
        job = wait_job(http, job_id, timeout=300)
    assert job["status"] == "succeeded", job
    assert stage(job, "talker")["status"] == "skipped" and stage(job, "token2wav")["status"] == "skipped"
    assert isinstance(job["outputs"]["text"], str) and not job["outputs"].get("audio")


def test_qwen3_omni_with_the_thinker_on_vllm_answers_in_text_and_speech(vomni):
    with vomni.client() as http:
        job_id = submit(http, {
            "pipeline": "vllm_qwen3_omni",
            "inputs": {"prompt": "Describe both.", "image": png_uri("green", (64, 64)), "audio": wav_uri(0.5)},
            "params": {"thinker": {"max_tokens": 5, "seed": 3}, "talker": {"min_tokens": 6, "max_tokens": 6}},
        })
        job = wait_job(http, job_id, timeout=300)
        workers = http.get("/admin/api/workers").json()["data"]
        assert job["status"] == "succeeded", job
        assert isinstance(job["outputs"]["text"], str) and job["outputs"]["text"]
        rate, frames = download_wav(http, job)
    # 6 frames (max_tokens), 1920 samples each less the causal decoder's tail.
    assert rate == 24000 and frames == 6 * 1920 - 555
    assert [w["engine"] for w in workers if w.get("stage") == "vllm_qwen3_omni.thinker"] == ["vllm_omni_thinker"]
