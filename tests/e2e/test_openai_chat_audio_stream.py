"""Streamed chat completions with audio output through the `openai` client, on both omni pipelines.

`delta.audio` carries the transcript and PCM16: Qwen3-Omni streams its talker → code2wav edge, so
audio arrives while the talker still speaks; this module's Qwen2.5-Omni copy has its `streams:`
removed, so its audio comes from the stored WAV once the job ends (the route's path for pipelines
that do not stream). Either way the deltas join to exactly the stored text and WAV, and a restart never
splices two attempts' audio into one reply.
"""

from __future__ import annotations

import base64
import io
import re
import time
import wave
from datetime import UTC, datetime

import openai
import pytest

from api.openai.chat_audio import PIECE_BYTES
from omnijobs.pipelines.registry import BUILTIN_DIR
from tests.cluster import isolated_cluster, wait_job
from tests.conftest import ARTIFACTS

Q3, Q25 = "qwen3_omni_chat_audio", "qwen2_5_omni_chat_audio"
CODES = 240  # the Qwen3 talker's length here: about ten chunks of streamed audio per reply


def renamed(pipeline: str, name: str) -> str:
    """A shipped pipeline under a name (so queues) of this module's own."""
    text = (BUILTIN_DIR / f"{pipeline}.yaml").read_text()
    assert f"name: {pipeline}\n" in text
    return text.replace(f"name: {pipeline}\n", f"name: {name}\n")


def long_talker() -> str:
    """Qwen3-Omni whose talker speaks CODES frames by default (chat has no talker params to ask for it)."""
    text = renamed("qwen3_omni", Q3)
    text, n = re.subn(r"max_tokens: \{type: integer, default: 32, min: 1, max: 8192\}",
                      f"max_tokens: {{type: integer, default: {CODES}, min: 1, max: 8192}}", text)
    text, m = re.subn(r"min_tokens: \{type: integer, default: 4,", f"min_tokens: {{type: integer, default: {CODES},",
                      text)
    assert (n, m) == (1, 1)
    return text


def unstreamed(text: str) -> str:
    """The pipeline with its streamed edges made plain: audio only once the job has ended."""
    text, n = re.subn(r"^\s+streams:.*\n", "", text, flags=re.M)
    assert n == 2  # thinker → talker and talker → token2wav
    return text


@pytest.fixture(scope="module")
def omni(settings_env, tmp_path_factory):
    pipelines = {Q3: long_talker(), Q25: unstreamed(renamed("qwen2_5_omni", Q25))}
    with isolated_cluster(settings_env, ARTIFACTS / "e2e-logs-openai-chat-audio-stream", pipelines,
                          tmp_path_factory.mktemp("chat-audio-pipelines")) as c:
        c.start_reconciler()  # re-queues the stage runs of a killed worker
        # Qwen3's stages in processes of their own (a test kills one mid-stream); Qwen2.5's share one.
        started = [c.start_worker(f"{Q3}.{s}") for s in ("thinker", "talker", "code2wav")]
        log = c.log_dir / f"worker-{Q25}.log"
        offset = log.stat().st_size if log.exists() else 0
        proc = c._spawn(f"worker-{Q25}", ["worker"] + [a for s in ("thinker", "talker", "token2wav")
                                                         for a in ("--stage", f"{Q25}.{s}")])
        c.wait_workers_ready(started, timeout=300)

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{log.name} exited with {proc.returncode}:\n{c.tail(log)}")
            with open(log, "rb") as f:
                f.seek(offset)
                return f.read().count(b" ready.") >= 3
        c._wait(ready, log.name, 300)
        yield c


@pytest.fixture(scope="module")
def ai(omni):
    return openai.OpenAI(base_url=f"{omni.api_url}/v1", api_key=omni.admin_key["key"], max_retries=0, timeout=300)


def stored(omni, job_id: str) -> tuple[dict, bytes]:
    with omni.client() as http:
        job = wait_job(http, job_id, timeout=240)
        r = http.get(f"/v1/jobs/{job_id}/outputs/audio")
    assert r.status_code == 200, r.text
    with wave.open(io.BytesIO(r.content)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (24000, 2, 1)
        return job, w.readframes(w.getnframes())


def stage(job: dict, name: str) -> dict:
    return next(s for s in job["stages"] if s["name"] == name)


def job_ids(omni) -> list[str]:
    with omni.client() as http:
        return [j["id"] for j in http.get("/v1/jobs", params={"limit": 100}).json()["data"]]


class Reply:
    """One streamed chat with audio: its job id and every chunk with the moment it arrived."""

    def __init__(self, ai, model: str, voice: str, on_audio=None, **extra):
        self.chunks: list[tuple[datetime, object]] = []
        self.error: openai.APIError | None = None
        with ai.chat.completions.with_streaming_response.create(
                model=model, stream=True, modalities=["text", "audio"], audio={"voice": voice, "format": "pcm16"},
                max_tokens=6, messages=[{"role": "user", "content": "Tell me a story."}], **extra) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            self.job_id = response.headers["omnijobs-job-id"]
            try:
                for chunk in response.parse():
                    self.chunks.append((datetime.now(UTC), chunk))
                    if on_audio and _data(chunk):
                        on_audio, hook = None, on_audio
                        hook()  # once, at the first audio
            except openai.APIError as exc:
                self.error = exc

    def audio(self) -> list:
        return [c.choices[0].delta.audio for _, c in self.chunks if c.choices and c.choices[0].delta.audio]

    def pcm(self) -> bytes:
        return b"".join(base64.b64decode(a.data) for a in self.audio() if a.data)

    def transcript(self) -> str:
        return "".join(a.transcript or "" for a in self.audio())

    def first_data_at(self) -> datetime:
        return next(t for t, c in self.chunks if _data(c))


def _data(chunk) -> bool:
    return bool(chunk.choices and chunk.choices[0].delta.audio and chunk.choices[0].delta.audio.data)


def test_qwen3_streams_audio_deltas_while_the_talker_speaks_and_they_are_the_stored_reply(ai, omni):
    reply = Reply(ai, Q3, "chelsie", stream_options={"include_usage": True})
    job, pcm = stored(omni, reply.job_id)
    assert reply.error is None and job["status"] == "succeeded", (reply.error, job)
    audio = reply.audio()
    assert reply.pcm() == pcm and len(pcm) > 0
    assert reply.transcript() == job["outputs"]["text"]
    # The first audio arrived while the talker was still generating codes, so long before the job ended.
    assert reply.first_data_at() < datetime.fromisoformat(stage(job, "talker")["finished_at"])
    assert len([a for a in audio if a.data]) >= 3
    assert all(len(base64.b64decode(a.data)) <= PIECE_BYTES for a in audio if a.data)
    # OpenAI's shape: the first audio delta names the audio; the last holds only its expiry.
    assert audio[0].id == f"audio-{reply.job_id}" and audio[0].expires_at > time.time()
    assert audio[-1].model_dump(exclude_none=True) == {"expires_at": audio[0].expires_at}
    assert all(a.id is None for a in audio[1:])
    # The text is the transcript (as OpenAI streams it), not also content.
    assert all(c.choices[0].delta.content is None for _, c in reply.chunks if c.choices)
    chunks = [c for _, c in reply.chunks]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (
        ["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == \
        stage(job, "thinker")["outputs"]["usage"]["completion_tokens"]
    assert stage(job, "talker")["params"]["speaker"] == "chelsie"


def test_qwen2_5_sends_its_whole_unstreamed_wav_as_audio_deltas(ai, omni):
    reply = Reply(ai, Q25, "Ethan")
    job, pcm = stored(omni, reply.job_id)
    assert reply.error is None and job["status"] == "succeeded", (reply.error, job)
    assert reply.pcm() == pcm and len(pcm) > 0
    assert reply.transcript() == job["outputs"]["text"]
    assert all(len(base64.b64decode(a.data)) <= PIECE_BYTES for a in reply.audio() if a.data)
    assert reply.audio()[0].id == f"audio-{reply.job_id}"
    assert stage(job, "talker")["params"]["speaker"] == "Ethan"


def test_unstreamed_pcm16_is_the_raw_samples_of_the_wav(ai, omni):
    raw = ai.chat.completions.with_raw_response.create(
        model=Q25, modalities=["text", "audio"], audio={"voice": "Chelsie", "format": "pcm16"}, max_tokens=4,
        messages=[{"role": "user", "content": "Hello."}])
    message = raw.parse().choices[0].message
    _, pcm = stored(omni, raw.headers["omnijobs-job-id"])
    assert base64.b64decode(message.audio.data) == pcm and message.audio.transcript == message.content


@pytest.mark.parametrize(("fmt", "says"), [("wav", "pcm16"), ("mp3", "audio.format")])
def test_a_stream_in_another_format_than_pcm16_is_a_400_and_makes_no_job(ai, omni, fmt, says):
    before = job_ids(omni)
    with pytest.raises(openai.BadRequestError) as info:
        ai.chat.completions.create(model=Q3, stream=True, modalities=["text", "audio"],
                                   audio={"voice": "ethan", "format": fmt},
                                   messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["param"] == "audio.format" and says in info.value.body["message"], info.value.body
    assert job_ids(omni) == before


def test_a_decoder_killed_mid_stream_never_leaves_the_client_a_spliced_reply(ai, omni):
    def kill_code2wav():
        omni.kill(f"worker-{Q3}.code2wav")
        omni.wait_workers_ready([omni.start_worker(f"{Q3}.code2wav")], timeout=120)

    reply = Reply(ai, Q3, "ethan", on_audio=kill_code2wav)
    job, pcm = stored(omni, reply.job_id)
    assert job["status"] == "succeeded" and stage(job, "code2wav")["attempt"] == 2, job
    got = reply.pcm()
    # The retried decoder decodes the same codes; where its samples repeat what was sent the stream goes
    # on to the stored reply exactly, and where they differ at all (float rounding of another batch
    # layout is enough) the stream ends with `audio_restarted` before any of the new attempt is sent.
    if reply.error is None:
        assert got == pcm and reply.transcript() == job["outputs"]["text"]
    else:
        assert reply.error.code == "audio_restarted", reply.error
        assert got and not pcm.startswith(got)


def test_a_talker_that_speaks_anew_ends_the_stream_with_an_error_never_a_splice(ai, omni):
    def kill_talker():
        omni.kill(f"worker-{Q3}.talker")
        omni.wait_workers_ready([omni.start_worker(f"{Q3}.talker")], timeout=120)

    reply = Reply(ai, Q3, "ethan", on_audio=kill_talker)
    assert reply.error is not None and reply.error.code == "audio_restarted", reply.error
    assert f"/v1/jobs/{reply.job_id}" in reply.error.message
    # The job goes on (the stream's end is no disconnect): its stored reply is the new attempt's alone.
    job, pcm = stored(omni, reply.job_id)
    assert job["status"] == "succeeded" and stage(job, "talker")["attempt"] == 2, job
    got = reply.pcm()
    assert got and not pcm.startswith(got)  # what the client holds is not part of the final reply

