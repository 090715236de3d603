"""Qwen2.5-Omni with its talker → token2wav edge streamed: real API, Redis, Postgres and one worker
process per stage. token2wav renders tiles of the codes as they come (with the talker's voice read
from its speaker stream); the listener gets audio while the talker still runs, and what it got is
exactly the stored WAV."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.cluster import Cluster, wait_job
from tests.conftest import ARTIFACTS
from tests.e2e.test_streamed_audio import Listener, stage, stored_pcm

STAGES = ["qwen2_5_omni.thinker", "qwen2_5_omni.talker", "qwen2_5_omni.token2wav"]
# 24 kHz audio: 480 samples per codec frame, no trailing delay.
PER_FRAME = 480


@pytest.fixture(scope="module")
def omni(settings_env):
    c = Cluster(settings_env, ARTIFACTS / "e2e-logs-streamed-audio-qwen2_5")
    try:
        started = [c.start_worker(s) for s in STAGES]
        c.start_api()
        c.start_reconciler()
        c.wait_workers_ready(started, timeout=240)
        yield c
    finally:
        c.stop()


def body(seed: int, codes: int, speaker: str = "Chelsie") -> dict:
    return {"pipeline": "qwen2_5_omni", "inputs": {"prompt": f"tell me something {seed}"},
            "params": {"thinker": {"max_tokens": 6, "seed": seed},
                       "talker": {"min_tokens": codes, "max_tokens": codes, "seed": seed, "speaker": speaker},
                       "token2wav": {"seed": seed, "num_steps": 4}}}


def frames(job: dict) -> int:
    return stage(job, "talker")["outputs"]["usage"]["codes"]


def test_first_audio_arrives_before_the_talker_ends_and_the_chunks_are_the_wav(omni):
    with omni.client() as http:
        job = http.post("/v1/jobs", json=body(1, codes=400, speaker="Ethan")).json()
        listener = Listener(omni, job["id"])
        done = wait_job(http, job["id"], timeout=240)
        listener.join()
        assert done["status"] == "succeeded", done
        first_audio = next(t for t, e in listener.got if e["event"] == "audio")
        talker_end = datetime.fromisoformat(stage(done, "talker")["finished_at"])
        assert first_audio < talker_end, (first_audio, talker_end)
        assert "restart" not in listener.kinds()
        assert listener.audio_after_last_restart() == stored_pcm(http, job["id"])
        text = "".join(e["data"]["text"] for _, e in listener.got
                       if e["event"] == "delta" and e["data"].get("stage") == "thinker")
        assert text == done["outputs"]["text"]
        usage = stage(done, "token2wav")["outputs"]["usage"]
        assert usage["chunks"] >= 3 and usage["samples"] == frames(done) * PER_FRAME
        # The first chunk is the stream's first_chunk of frames: audio starts after 10 frames (and
        # their look-ahead), not after a burst.
        first = next(e["data"] for _, e in listener.got if e["event"] == "audio")
        assert first["offset"] == 0 and first["samples"] % PER_FRAME == 0


def test_jobs_streamed_at_once_render_together_in_their_own_voices(omni):
    voices = ["Chelsie", "Ethan", "Chelsie", "Ethan"]
    with omni.client() as http:
        jobs = [http.post("/v1/jobs", json=body(10 + k, codes=120 + 10 * k, speaker=v)).json()
                for k, v in enumerate(voices)]
        listeners = [Listener(omni, j["id"]) for j in jobs]
        done = [wait_job(http, j["id"], timeout=240) for j in jobs]
        for listener in listeners:
            listener.join()
        pcms = []
        for j, d, listener, voice in zip(jobs, done, listeners, voices, strict=True):
            assert d["status"] == "succeeded", d
            assert stage(d, "talker")["outputs"]["speaker"] == voice
            pcm = stored_pcm(http, j["id"])
            assert listener.audio_after_last_restart() == pcm
            pcms.append(pcm)
        # Each job's audio has its own length (its own codes) and no two are alike.
        assert [len(p) // 2 for p in pcms] == [frames(d) * PER_FRAME for d in done]
        assert len(set(pcms)) == len(jobs)
        rows = max(stage(d, "token2wav")["outputs"]["usage"]["decode_rows_max"] for d in done)
        assert rows > 1  # one render call took chunks of several jobs


def test_kill_9_of_token2wav_mid_stream_restarts_it_and_the_job_succeeds(omni):
    with omni.client() as http:
        job = http.post("/v1/jobs", json=body(3, codes=800)).json()
        listener = Listener(omni, job["id"])
        assert listener.first_audio.wait(120), listener.kinds()
        omni.kill("worker-qwen2_5_omni.token2wav")
        omni.wait_workers_ready([omni.start_worker("qwen2_5_omni.token2wav")], timeout=120)
        done = wait_job(http, job["id"], timeout=240)
        listener.join()
        assert done["status"] == "succeeded", done
        assert stage(done, "token2wav")["attempt"] == 2
        assert "restart" in listener.kinds()
        assert listener.audio_after_last_restart() == stored_pcm(http, job["id"])
        assert len(stored_pcm(http, job["id"])) // 2 == frames(done) * PER_FRAME
