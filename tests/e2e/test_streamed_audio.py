"""Qwen3-Omni with its thinker → talker → code2wav edges streamed: real API, Redis, Postgres and
one worker process per stage. The listener gets audio while the thinker and the talker still run,
and what it got is the stored WAV; faults restart the stream and never splice two attempts."""

from __future__ import annotations

import base64
import io
import threading
import time
import wave
from datetime import UTC, datetime

import pytest
import redis

from tests.cluster import Cluster, wait_job
from tests.conftest import ARTIFACTS
from tests.sse import events

STAGES = ["qwen3_omni.thinker", "qwen3_omni.talker", "qwen3_omni.code2wav"]


@pytest.fixture(scope="module")
def omni(settings_env):
    c = Cluster(settings_env, ARTIFACTS / "e2e-logs-streamed-audio")
    try:
        started = [c.start_worker(stage) for stage in STAGES]
        c.start_api()
        c.start_reconciler()
        c.wait_workers_ready(started, timeout=240)
        yield c
    finally:
        c.stop()


def body(seed: int, codes: int = 120, tokens: int = 6) -> dict:
    return {"pipeline": "qwen3_omni", "inputs": {"prompt": f"tell me something {seed}"},
            "params": {"thinker": {"max_tokens": tokens, "seed": seed},
                       "talker": {"min_tokens": codes, "max_tokens": codes, "seed": seed}}}


class Listener:
    """Follows one job's events in a thread, noting when each arrived."""

    def __init__(self, cluster: Cluster, job_id: str):
        self.cluster, self.job_id = cluster, job_id
        self.got: list[tuple[datetime, dict]] = []
        self.first_audio = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self.cluster.client() as http, http.stream("GET", f"/v1/jobs/{self.job_id}/events", timeout=120) as r:
            for event in events(r):
                self.got.append((datetime.now(UTC), event))
                if event.get("event") == "audio":
                    self.first_audio.set()
                if event.get("event") == "end":
                    return

    def join(self) -> None:
        self.thread.join(timeout=120)
        assert not self.thread.is_alive()

    def kinds(self) -> list[str]:
        return [e["event"] for _, e in self.got]

    def audio_after_last_restart(self) -> bytes:
        """What a player holds: the audio since the last restart, placed at its offsets."""
        chunks: list[dict] = []
        for _, e in self.got:
            if e["event"] == "restart":
                chunks = []
            elif e["event"] == "audio":
                chunks.append(e["data"])
        pcm = bytearray()
        for c in chunks:
            assert c["offset"] == len(pcm) // 2  # in order, no gap, no overlap
            pcm += base64.b64decode(c["audio"])
        return bytes(pcm)


def stored_pcm(http, job_id: str) -> bytes:
    r = http.get(f"/v1/jobs/{job_id}/outputs/audio")
    assert r.status_code == 200
    with wave.open(io.BytesIO(r.content)) as w:
        assert w.getframerate() == 24000
        return w.readframes(w.getnframes())


def stage(job: dict, name: str) -> dict:
    return next(s for s in job["stages"] if s["name"] == name)


def frames(job: dict) -> int:
    """Codec frames the talker recorded; each decodes to 1920 samples, less the decoder's tail."""
    return stage(job, "talker")["outputs"]["usage"]["codes"]


def test_first_audio_arrives_before_the_thinker_and_talker_end_and_the_chunks_are_the_wav(omni):
    with omni.client() as http:
        job = http.post("/v1/jobs", json=body(1, codes=200, tokens=300)).json()
        listener = Listener(omni, job["id"])
        done = wait_job(http, job["id"], timeout=180)
        listener.join()
        assert done["status"] == "succeeded", done
        first_audio = next(t for t, e in listener.got if e["event"] == "audio")
        thinker_end = datetime.fromisoformat(stage(done, "thinker")["finished_at"])
        talker_end = datetime.fromisoformat(stage(done, "talker")["finished_at"])
        # The talker spoke from the thinker's stream: audio came out while the thinker still wrote.
        assert first_audio < thinker_end, (first_audio, thinker_end)
        assert first_audio < talker_end, (first_audio, talker_end)
        assert "restart" not in listener.kinds()
        assert listener.audio_after_last_restart() == stored_pcm(http, job["id"])
        text = "".join(e["data"]["text"] for _, e in listener.got
                       if e["event"] == "delta" and e["data"].get("stage") == "thinker")
        assert text == done["outputs"]["text"]
        usage = stage(done, "code2wav")["outputs"]["usage"]
        assert usage["chunks"] >= 3 and usage["samples"] == frames(done) * 1920 - 555


def test_eight_streamed_jobs_decode_together_without_cross_talk(omni):
    with omni.client() as http:
        jobs = [http.post("/v1/jobs", json=body(10 + k, codes=60 + 5 * k)).json() for k in range(8)]
        listeners = [Listener(omni, j["id"]) for j in jobs]
        done = [wait_job(http, j["id"], timeout=240) for j in jobs]
        for listener in listeners:
            listener.join()
        pcms = []
        for j, d, listener in zip(jobs, done, listeners, strict=True):
            assert d["status"] == "succeeded", d
            pcm = stored_pcm(http, j["id"])
            assert listener.audio_after_last_restart() == pcm
            pcms.append(pcm)
        # Each job's audio has its own length (its own codes) and no two are alike.
        assert [len(p) // 2 for p in pcms] == [frames(d) * 1920 - 555 for d in done]
        assert len(set(pcms)) == 8
        rows = max(stage(d, "code2wav")["outputs"]["usage"]["decode_rows_max"] for d in done)
        assert rows > 1  # one decoder call took chunks of several jobs


def _wait_audio(listener: Listener) -> None:
    assert listener.first_audio.wait(120), listener.kinds()


def test_kill_9_of_code2wav_mid_stream_restarts_it_and_the_job_succeeds(omni):
    with omni.client() as http:
        job = http.post("/v1/jobs", json=body(3, codes=400)).json()
        listener = Listener(omni, job["id"])
        _wait_audio(listener)
        omni.kill("worker-qwen3_omni.code2wav")
        omni.wait_workers_ready([omni.start_worker("qwen3_omni.code2wav")], timeout=120)
        done = wait_job(http, job["id"], timeout=240)
        listener.join()
        assert done["status"] == "succeeded", done
        assert stage(done, "code2wav")["attempt"] == 2
        assert "restart" in listener.kinds()
        assert listener.audio_after_last_restart() == stored_pcm(http, job["id"])


def test_kill_9_of_the_talker_mid_stream_sends_only_the_new_attempts_audio(omni):
    with omni.client() as http:
        job = http.post("/v1/jobs", json=body(4, codes=400)).json()
        listener = Listener(omni, job["id"])
        _wait_audio(listener)
        omni.kill("worker-qwen3_omni.talker")
        omni.wait_workers_ready([omni.start_worker("qwen3_omni.talker")], timeout=120)
        done = wait_job(http, job["id"], timeout=240)
        listener.join()
        assert done["status"] == "succeeded", done
        assert stage(done, "talker")["attempt"] == 2
        restarts = [e["data"] for _, e in listener.got if e["event"] == "restart"]
        assert restarts and restarts[-1]["attempt"] == 2, (listener.kinds(), done["stages"])
        # Every chunk after the last restart comes from the talker's second attempt.
        last = len(listener.kinds()) - 1 - listener.kinds()[::-1].index("restart")
        after = [e["data"] for _, e in listener.got][last:]
        assert all(d["attempt"] == 2 for d in after if "offset" in d)
        assert listener.audio_after_last_restart() == stored_pcm(http, job["id"])


def test_kill_9_of_the_thinker_mid_stream_restarts_the_talker_from_its_new_attempt(omni):
    with omni.client() as http:
        # A long reply: the talker speaks from its first tokens while the thinker goes on writing.
        job = http.post("/v1/jobs", json=body(6, codes=300, tokens=1500)).json()
        listener = Listener(omni, job["id"])
        _wait_audio(listener)
        assert http.get(f"/v1/jobs/{job['id']}").json()["stages"][0]["status"] == "running"
        omni.kill("worker-qwen3_omni.thinker")
        omni.wait_workers_ready([omni.start_worker("qwen3_omni.thinker")], timeout=120)
        done = wait_job(http, job["id"], timeout=300)
        listener.join()
        assert done["status"] == "succeeded", done
        # The thinker ran again; the talker's run went on, its row started over from the new attempt.
        assert stage(done, "thinker")["attempt"] == 2 and stage(done, "talker")["attempt"] == 1
        restarts = [e["data"] for _, e in listener.got if e["event"] == "restart"]
        assert restarts and restarts[-1]["attempt"] == 2  # the codes stream's second attempt
        last = len(listener.kinds()) - 1 - listener.kinds()[::-1].index("restart")
        after = [e["data"] for _, e in listener.got][last:]
        assert all(d["attempt"] == 2 for d in after if "offset" in d)
        assert listener.audio_after_last_restart() == stored_pcm(http, job["id"])
        assert len(stored_pcm(http, job["id"])) // 2 == frames(done) * 1920 - 555


def test_a_thinker_that_fails_before_writing_fails_the_job_and_its_waiting_talker_stops(omni):
    with omni.client() as http:
        # The prompt plus 2040 tokens exceeds the tiny thinker's 2048 positions: refused before generation.
        job = http.post("/v1/jobs", json=body(7, codes=50, tokens=2040)).json()
        done = wait_job(http, job["id"], timeout=60)
        assert done["status"] == "failed" and done["error"]["stage"] == "thinker", done
        assert "positions" in done["error"]["message"]
        # The talker, started beside the thinker to read its states, is canceled with the job rather
        # than left waiting for a stream that will never come.
        assert stage(done, "talker")["status"] == "canceled", done["stages"]
        assert stage(done, "code2wav")["status"] in ("canceled", "waiting"), done["stages"]


def test_cancel_mid_stream_stops_both_stages_and_the_stream_expires(omni, settings_env):
    with omni.client() as http:
        job = http.post("/v1/jobs", json=body(5, codes=2000)).json()
        listener = Listener(omni, job["id"])
        _wait_audio(listener)
        assert http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
        done = wait_job(http, job["id"], timeout=60)
        listener.join()
        assert done["status"] == "canceled"
        assert {stage(done, s)["status"] for s in ("talker", "code2wav")} == {"canceled"}
        # code2wav notices the cancel and lets the edge's stream expire soon (ended TTL), not in an hour.
        key = f"omnijobs:job:{job['id']}:edge:talker.codes"
        client = redis.Redis.from_url(settings_env["OMNIJOBS_BROKER_URL"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (0 < client.ttl(key) <= 300):
            time.sleep(0.2)
        assert 0 < client.ttl(key) <= 300
