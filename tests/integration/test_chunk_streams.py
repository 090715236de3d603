"""Streamed edges on real Redis: attempts and restarts of the chunk transport, and the Qwen3-Omni
talker streaming codes into code2wav, which decodes several jobs' chunks per call."""

from __future__ import annotations

import base64
import io
import threading
import time
import wave

import numpy as np
import pytest
import redis
import torch

from omnijobs.engines.base import StageRequest
from omnijobs.pipelines import load_registry
from omnijobs.streaming.channel import ChannelConfig, channel_key, decode
from omnijobs.streaming.chunks import ChunkStreams, edge_key, schedule
from omnijobs.pipelines.spec import StreamSpec


@pytest.fixture()
def config(redis_url):
    return ChannelConfig(redis_url, ended_ttl_s=7)


@pytest.fixture()
def spec():
    return load_registry().get("qwen3_omni")


def req(job: str, run: str = "r") -> StageRequest:
    return StageRequest(run, {}, {}, job)


def test_chunks_carry_their_attempt_and_a_newer_attempt_restarts_the_reader(config, spec):
    writer = ChunkStreams(config, spec, "talker")
    reader = ChunkStreams(config, spec, "code2wav")
    first = req("j1")
    writer.emit(first, "codes", torch.arange(8).reshape(4, 2))
    edge = reader.open("j1", "talker.codes")
    reader.read([edge], 100)
    assert edge.attempt == 1 and [c.tolist() for c in edge.chunks] == [[[0, 1], [2, 3], [4, 5], [6, 7]]]
    assert not edge.restarted and not edge.ended
    # The first attempt dies; its retry writes under a higher attempt number from seq 0.
    retry = req("j1")
    writer.emit(retry, "codes", torch.full((4, 3), 9))
    writer.emit(retry, "codes", None, final=True)
    reader.read([edge], 100)
    assert edge.restarted and edge.attempt == 2 and edge.ended
    assert [c.shape for c in edge.chunks if c is not None] == [(4, 3)]
    # A second reader (a retried downstream run) starts at the newest attempt, and is told it re-reads.
    again = reader.open("j1", "talker.codes")
    reader.read([again], 100)
    assert again.attempt == 2 and again.restarted and again.ended and len(again.chunks) == 2
    reader.done([again])
    client = redis.Redis.from_url(config.redis_url)
    assert 0 < client.ttl(edge_key("j1", "talker", "codes")) <= 7


def test_ports_no_stage_streams_are_not_written(config, spec):
    writer = ChunkStreams(config, spec, "thinker")
    writer.emit(req("j2"), "hidden", torch.zeros(2))
    assert not redis.Redis.from_url(config.redis_url).exists(edge_key("j2", "thinker", "hidden"))


def test_schedule_is_first_chunk_then_chunks():
    assert schedule(32, StreamSpec(chunk=25, first_chunk=10)) == [10, 32]
    assert schedule(7, StreamSpec(chunk=3)) == [3, 6, 7]


def _pcm(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def test_talker_streams_into_code2wav_which_decodes_jobs_together(config, spec, models_dir):
    from omnijobs.engines.factory import create_engine

    def engine(stage: str, **kw):
        e = create_engine(spec.stage(stage), "cpu", models_dir, **kw)
        e.load()
        return e

    thinker = engine("thinker")
    talker = engine("talker", chunks=ChunkStreams(config, spec, "talker"))
    code2wav = engine("code2wav", chunks=ChunkStreams(config, spec, "code2wav"))
    jobs = [f"job-{k}" for k in range(3)]
    thought = thinker.run([StageRequest(f"t{k}", {"prompt": f"say {k}", "modalities": ["text", "audio"]},
                                        {"max_tokens": 4, "seed": k}, j) for k, j in enumerate(jobs)])
    talk = [StageRequest(f"k{k}", {"hidden": t["hidden"]}, {"max_tokens": 32, "min_tokens": 28, "seed": k}, j)
            for k, (t, j) in enumerate(zip(thought, jobs))]
    talked: list = []
    speaker = threading.Thread(target=lambda: (time.sleep(0.3), talked.extend(talker.run(talk))))
    speaker.start()
    # code2wav starts before the talker has written anything (as a streamed run does) and reads along.
    wavs = code2wav.run([StageRequest(f"w{k}", {"codes": None}, {}, j) for k, j in enumerate(jobs)])
    speaker.join()
    client = redis.Redis.from_url(config.redis_url)
    plain = create_engine(spec.stage("code2wav").model_copy(update={"streams": {}}), "cpu", models_dir)
    plain.load()
    for k, (job, out) in enumerate(zip(jobs, wavs)):
        assert not isinstance(out, BaseException), out
        events = [decode(f) for _, f in client.xrange(channel_key(job))]
        audio = [d for kind, d in events if kind == "audio"]
        # The talker sent its codes in several chunks; how many decode rounds they took depends on how
        # far the talker ran ahead (a round decodes every chunk pending), so only the first and last
        # event are fixed.
        assert client.xlen(edge_key(job, "talker", "codes")) >= 2
        assert audio and audio[0]["offset"] == 0 and audio[-1]["final"]
        # The first piece (first_chunk frames) went out before the rest: later windows, decoded with
        # only the convolutions' reach of context, are in the comparison with the whole decode below.
        assert len(audio) >= 2
        joined = b"".join(base64.b64decode(d["audio"]) for d in audio)
        stored = _pcm(out["audio"].data)
        assert joined == stored.tobytes()  # the chunks are the stored WAV
        codes = talked[k]["codes"]["codes"]
        assert len(stored) == codes.shape[1] * 1920 - code2wav.tail
        # The same codes decoded whole, without a stream: the same audio (to one 16-bit step).
        whole = _pcm(plain.run([StageRequest("p", {"codes": {"codes": codes}}, {}, "p")])[0]["audio"].data)
        assert np.abs(whole.astype(int) - stored.astype(int)).max() <= 1
    # Chunks of several jobs went through one decoder call (at most `decode_rows` rows a call).
    assert max(o["usage"]["decode_rows_max"] for o in wavs) > 1
    # No cross-talk: every job's audio is its own.
    assert len({_pcm(o["audio"].data).tobytes() for o in wavs}) == 3
