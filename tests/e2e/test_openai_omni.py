"""The `openai` client's chat with audio output on the omni pipelines: text and a WAV in one reply."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import time
import wave

import numpy as np
import openai
import pytest

from tests.cluster import Cluster
from tests.conftest import ARTIFACTS

# One worker process per pipeline hosting its three stages: half the start-up cost of one per stage.
PIPELINES = {
    "qwen2_5_omni": ["thinker", "talker", "token2wav"],
    "qwen3_omni": ["thinker", "talker", "code2wav"],
}
VOICES = {"qwen2_5_omni": "Ethan", "qwen3_omni": "chelsie"}


def _ready_lines(path) -> int:
    return path.read_bytes().count(b" ready.") if path.exists() else 0


@pytest.fixture(scope="module")
def omni(settings_env):
    c = Cluster(settings_env, ARTIFACTS / "e2e-logs-openai-omni")
    try:
        logs = {}
        for pipeline, stages in PIPELINES.items():
            args = ["worker"] + [a for s in stages for a in ("--stage", f"{pipeline}.{s}")]
            logs[pipeline] = (c.log_dir / f"worker-{pipeline}.log", _ready_lines(c.log_dir / f"worker-{pipeline}.log"))
            c._spawn(f"worker-{pipeline}", args)
        c.start_api()
        for pipeline, (path, before) in logs.items():
            proc = c.procs[f"worker-{pipeline}"]

            def ready(proc=proc, path=path, before=before, n=len(PIPELINES[pipeline])):
                if proc.poll() is not None:
                    raise RuntimeError(f"{path.name} exited with {proc.returncode}:\n{c.tail(path)}")
                return _ready_lines(path) - before >= n
            c._wait(ready, path.name, 300)
        yield c
    finally:
        # The jobs are over: stop every process at once, killing whoever lingers past a short grace.
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


@pytest.fixture(scope="module")
def ai(omni):
    return openai.OpenAI(base_url=f"{omni.api_url}/v1", api_key=omni.admin_key["key"], max_retries=0, timeout=300)


def stages_of(omni, job_id: str) -> dict:
    with omni.client() as http:
        job = http.get(f"/v1/jobs/{job_id}").json()
    return job, {s["name"]: s for s in job["stages"]}


@pytest.mark.parametrize("model", list(PIPELINES))
def test_chat_with_audio_output_returns_text_and_a_wav(ai, omni, model):
    raw = ai.chat.completions.with_raw_response.create(
        model=model, modalities=["text", "audio"], audio={"voice": VOICES[model], "format": "wav"},
        max_tokens=5, seed=3, messages=[{"role": "user", "content": "Say hello."}])
    reply = raw.parse()
    job, stages = stages_of(omni, raw.headers["omnijobs-job-id"])
    message = reply.choices[0].message
    assert job["status"] == "succeeded" and message.content == job["outputs"]["text"]
    assert message.audio is not None and message.audio.transcript == message.content
    assert message.audio.id and message.audio.expires_at > time.time()
    with wave.open(io.BytesIO(base64.b64decode(message.audio.data))) as w:
        assert w.getframerate() == 24000 and w.getsampwidth() == 2
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert samples.size > 0 and int(np.abs(samples).max()) > 0  # not silent
    assert all(s["status"] == "succeeded" for s in stages.values()), stages
    assert stages["talker"]["params"]["speaker"] == VOICES[model]  # the asked voice reached the talker


@pytest.mark.parametrize("model", list(PIPELINES))
def test_text_only_chat_skips_the_speech_stages(ai, omni, model):
    raw = ai.chat.completions.with_raw_response.create(
        model=model, modalities=["text"], max_tokens=4, seed=2, messages=[{"role": "user", "content": "Text only."}])
    reply = raw.parse()
    job, stages = stages_of(omni, raw.headers["omnijobs-job-id"])
    assert reply.choices[0].message.audio is None and reply.choices[0].message.content == job["outputs"]["text"]
    assert stages["thinker"]["status"] == "succeeded"
    assert {n: s["status"] for n, s in stages.items() if n != "thinker"} == dict.fromkeys(PIPELINES[model][1:],
                                                                                          "skipped")
    assert not job["outputs"].get("audio")


def test_a_voice_the_talker_lacks_names_the_field(ai):
    with pytest.raises(openai.BadRequestError) as info:
        ai.chat.completions.create(model="qwen2_5_omni", modalities=["text", "audio"],
                                   audio={"voice": "nobody", "format": "wav"},
                                   messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["param"] == "audio.voice", info.value.body
