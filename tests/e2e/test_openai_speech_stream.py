"""/v1/audio/speech with stream_format "audio" on Qwen3-Omni through the `openai` client: the body
streams as code2wav decodes (pieces arrive before the job ends) and holds exactly the stored WAV's samples."""

from __future__ import annotations

import io
import re
import wave
from datetime import UTC, datetime

import openai
import pytest

from omnijobs.pipelines.registry import BUILTIN_DIR
from tests.cluster import isolated_cluster, wait_job
from tests.conftest import ARTIFACTS

NAME = "qwen3_omni_long_speech"
CODES = 240  # the talker's default length here: about 10 chunks of audio per reply


def long_speech() -> str:
    """The shipped qwen3_omni under another name, its talker speaking CODES frames by default."""
    text = (BUILTIN_DIR / "qwen3_omni.yaml").read_text().replace("name: qwen3_omni\n", f"name: {NAME}\n")
    text, n = re.subn(r"max_tokens: \{type: integer, default: 32, min: 1, max: 8192\}",
                      f"max_tokens: {{type: integer, default: {CODES}, min: 1, max: 8192}}", text)
    text, m = re.subn(r"min_tokens: \{type: integer, default: 4,", f"min_tokens: {{type: integer, default: {CODES},",
                      text)
    assert (n, m) == (1, 1)
    return text


@pytest.fixture(scope="module")
def omni(settings_env, tmp_path_factory):
    with isolated_cluster(settings_env, ARTIFACTS / "e2e-logs-openai-speech-stream", {NAME: long_speech()},
                          tmp_path_factory.mktemp("speech-pipelines")) as c:
        c.wait_workers_ready([c.start_worker(f"{NAME}.{s}") for s in ("thinker", "talker", "code2wav")], timeout=240)
        yield c


@pytest.fixture(scope="module")
def ai(omni):
    return openai.OpenAI(base_url=f"{omni.api_url}/v1", api_key=omni.admin_key["key"], max_retries=0, timeout=300)


def stored(omni, job_id: str) -> tuple[dict, bytes]:
    with omni.client() as http:
        job = wait_job(http, job_id, timeout=120)
        r = http.get(f"/v1/jobs/{job_id}/outputs/audio")
    assert r.status_code == 200
    with wave.open(io.BytesIO(r.content)) as w:
        assert w.getframerate() == 24000 and w.getsampwidth() == 2
        return job, w.readframes(w.getnframes())


def read_pieces(response) -> list[tuple[datetime, bytes]]:
    return [(datetime.now(UTC), piece) for piece in response.iter_bytes()]


def test_streamed_wav_arrives_in_pieces_before_the_job_ends_and_is_the_stored_audio(ai, omni):
    with ai.audio.speech.with_streaming_response.create(model=NAME, input="tell me a story", voice="ethan",
                                                        response_format="wav", stream_format="audio") as response:
        assert response.headers["content-type"] == "audio/wav"
        job_id = response.headers["omnijobs-job-id"]
        pieces = read_pieces(response)
    job, pcm = stored(omni, job_id)
    assert job["status"] == "succeeded"
    body = b"".join(p for _, p in pieces)
    with wave.open(io.BytesIO(body)) as w:  # a streamed WAV: its header cannot know the length
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (24000, 2, 1)
    assert body[:4] == b"RIFF" and body[36:40] == b"data" and body[44:] == pcm
    ended = datetime.fromisoformat(job["finished_at"])
    early = [p for t, p in pieces if t < ended]
    assert len(early) >= 3, (len(pieces), [t.isoformat() for t, _ in pieces], ended)
    # Whole codec frames of 1920 samples (less the decoder's tail), about as many as the talker was asked for.
    frames, rest = divmod(len(pcm) // 2 + 555, 1920)
    assert rest == 0 and CODES - 4 <= frames <= CODES, frames


def test_streamed_pcm_is_the_raw_samples(ai, omni):
    with ai.audio.speech.with_streaming_response.create(model=NAME, input="hello there", voice="chelsie",
                                                        response_format="pcm", stream_format="audio") as response:
        assert response.headers["content-type"] == "audio/pcm"
        job_id = response.headers["omnijobs-job-id"]
        body = b"".join(p for _, p in read_pieces(response))
    job, pcm = stored(omni, job_id)
    talker = next(s for s in job["stages"] if s["name"] == "talker")
    assert body == pcm and talker["params"]["speaker"] == "chelsie"


def test_unstreamed_pcm_is_the_raw_samples_of_the_wav(ai, omni):
    raw = ai.audio.speech.with_raw_response.create(model=NAME, input="hello", voice="ethan", response_format="pcm")
    _, pcm = stored(omni, raw.headers["omnijobs-job-id"])
    assert raw.content == pcm


def test_an_unknown_stream_format_is_a_400_naming_it(omni):
    with omni.client() as http:
        before = len(http.get("/v1/jobs").json()["data"])
        r = http.post("/v1/audio/speech", json={"model": NAME, "input": "x", "stream_format": "sse"})
        assert r.status_code == 400, r.text
        assert "stream_format" in r.text
        assert len(http.get("/v1/jobs").json()["data"]) == before
