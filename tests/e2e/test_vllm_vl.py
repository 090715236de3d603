"""Qwen2.5-VL with images on the vLLM engine, end to end through HTTP and the `openai` client.

The stage worker runs in the vLLM environment (.venv-vllm, built by tests/vllm_env.sh) and hosts
the pipeline's `qwen2_5_vl` kind on vLLM (OMNIJOBS_AR_ENGINE=auto); images reach vLLM as
`multi_modal_data`.
"""

from __future__ import annotations

import subprocess

import openai
import pytest

from tests.cluster import REPO, isolated_cluster, wait_job
from tests.conftest import ARTIFACTS
from tests.e2e.test_omni import png_uri

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"

PIPELINE = """
name: vllm_vl
inputs:
  prompt: {type: text}
  image: {type: image, required: false}
  image_2: {type: image, required: false}
outputs:
  text: generate.text
stages:
  generate:
    engine: qwen2_5_vl
    model: tiny/qwen2_5_vl
    inputs: {prompt: job.prompt, image: job.image, image_2: job.image_2}
    batch: {max_size: 8, max_wait_ms: 20}
    engine_args: {max_model_len: 1024, max_num_seqs: 8, limit_mm_per_prompt: {image: 2}}
    timeout_s: 600
    params:
      max_tokens: {type: integer, default: 8, min: 1, max: 256}
      temperature: {type: number, default: 1.0}
      seed: {type: integer, default: null, nullable: true}
      ignore_eos: {type: boolean, default: true}
"""


@pytest.fixture(scope="module")
def vvl(settings_env, tmp_path_factory):
    assert VLLM_PYTHON.exists(), "the vLLM environment is missing: run tests/vllm_env.sh (tests/run.sh does)"
    with isolated_cluster(settings_env, ARTIFACTS / "e2e-vllm-vl-logs", {"vllm_vl": PIPELINE},
                          tmp_path_factory.mktemp("vllm-vl-pipelines")) as c:
        log_path = c.log_dir / "vllm-vl-worker.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        env = {**c.env, "OMNIJOBS_AR_ENGINE": "auto", "HF_HUB_OFFLINE": "1",
               "VLLM_CACHE_ROOT": str(ARTIFACTS / "vllm-cache")}
        c.procs["vllm-vl-worker"] = subprocess.Popen(
            [str(VLLM_PYTHON), "-m", "omnijobs", "worker", "--stage", "vllm_vl.generate"], env=env, cwd=REPO,
            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        c.wait_workers_ready([(c.procs["vllm-vl-worker"], log_path, offset)], timeout=600)
        yield c


def submit(http, inputs: dict, **params) -> str:
    r = http.post("/v1/jobs", json={"pipeline": "vllm_vl", "inputs": inputs, "params": params})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def usage(job: dict) -> dict:
    return job["stages"][0]["outputs"]["usage"]


def test_images_reach_the_vllm_engine(vvl):
    with vvl.client() as http:
        ids = {
            "none": submit(http, {"prompt": "Describe."}, max_tokens=5, seed=1),
            "one": submit(http, {"prompt": "Describe.", "image": png_uri("red")}, max_tokens=5, seed=1),
            "two": submit(http, {"prompt": "Describe.", "image": png_uri("red"), "image_2": png_uri("blue", (84, 56))},
                          max_tokens=5, seed=1),
            "one again": submit(http, {"prompt": "Describe.", "image": png_uri("red")}, max_tokens=5, seed=1),
        }
        jobs = {k: wait_job(http, v, timeout=180) for k, v in ids.items()}
        workers = http.get("/admin/api/workers").json()["data"]
    for job in jobs.values():
        assert job["status"] == "succeeded", job
        assert isinstance(job["outputs"]["text"], str) and usage(job)["completion_tokens"] == 5
    assert [w["engine"] for w in workers if w.get("stage") == "vllm_vl.generate"] == ["vllm"], workers
    # Each image adds its vision tokens to the prompt the engine saw.
    assert usage(jobs["none"])["prompt_tokens"] < usage(jobs["one"])["prompt_tokens"] < usage(jobs["two"])["prompt_tokens"]
    # Same image, prompt and seed: the same reply, whichever batch each joined.
    assert jobs["one"]["outputs"]["text"] == jobs["one again"]["outputs"]["text"]


def test_chat_with_an_image_through_the_openai_client(vvl):
    ai = openai.OpenAI(base_url=f"{vvl.api_url}/v1", api_key=vvl.admin_key["key"], max_retries=0, timeout=300)
    raw = ai.chat.completions.with_raw_response.create(model="vllm_vl", max_tokens=4, seed=2, messages=[{
        "role": "user", "content": [{"type": "text", "text": "What is this?"},
                                    {"type": "image_url", "image_url": {"url": png_uri("green", (64, 64))}}]}])
    reply = raw.parse()
    with vvl.client() as http:
        job = http.get(f"/v1/jobs/{raw.headers['omnijobs-job-id']}").json()
    assert job["status"] == "succeeded" and job["inputs"]["image"]["type"] == "image"
    assert reply.choices[0].message.content == job["outputs"]["text"]
    assert reply.usage.completion_tokens == 4 and reply.usage.prompt_tokens == usage(job)["prompt_tokens"]
