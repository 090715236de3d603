"""Streamed edges on real Redis: attempts and restarts of the chunk transport, the omni thinkers
streaming their states to the talkers, and the Qwen3-Omni talker streaming codes into code2wav,
which decodes several jobs' chunks per call."""

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
    writer.emit(req("j2"), "text", torch.zeros(2))
    assert not redis.Redis.from_url(config.redis_url).exists(edge_key("j2", "thinker", "text"))


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


def test_a_chunk_over_the_inline_limit_goes_through_the_artifact_store(config, spec, tmp_path):
    from omnijobs.artifacts.values import StageValues
    from omnijobs.settings import Settings
    from omnijobs.streaming.chunks import MAX_INLINE

    store = StageValues(Settings(artifacts="file", artifacts_dir=tmp_path))
    writer = ChunkStreams(config, spec, "thinker", values=store)
    reader = ChunkStreams(config, spec, "talker", values=store)
    big = {"prompt_embeds": torch.randn(MAX_INLINE // 4 + 10), "prompt_ids": torch.arange(5)}
    job = f"j3-{time.time_ns()}"
    row = req(job)  # one writer row: one attempt
    writer.emit_many([(row, "hidden", big, False), (row, "hidden", torch.ones(2, 3), False)])
    writer.emit(row, "hidden", None, final=True)
    # Redis holds the reference only; the bytes are in the store, under the job's prefix.
    entries = redis.Redis.from_url(config.redis_url).xrange(edge_key(job, "thinker", "hidden"))
    assert b"ref" in entries[0][1] and b"data" not in entries[0][1] and b"data" in entries[1][1]
    assert [p.name.startswith("thinker.hidden-") for p in (tmp_path / job / ".chunks").iterdir()] == [True]
    edge = reader.open(job, "thinker.hidden")
    reader.read([edge], 100)
    assert edge.ended and torch.equal(edge.chunks[0]["prompt_embeds"], big["prompt_embeds"])
    assert torch.equal(edge.chunks[0]["prompt_ids"], big["prompt_ids"]) and edge.chunks[1].shape == (2, 3)
    # The job's end frees them (its other artifacts stay where they are).
    from omnijobs.artifacts.base import free_chunks

    (tmp_path / job / "thinker").mkdir()
    (tmp_path / job / "thinker" / "text-x").write_bytes(b"kept")
    assert free_chunks(store.transit, job) == 1
    assert not (tmp_path / job / ".chunks").exists() and (tmp_path / job / "thinker" / "text-x").exists()
    # Without a store such a chunk is refused before anything is written, and the row's next chunk
    # still starts its stream (no sequence number was spent on the refused one).
    plain, refused, other = ChunkStreams(config, spec, "thinker"), req(f"j4-{job}"), req(f"j4-{job}")
    with pytest.raises(ValueError, match="inline limit"):
        plain.emit_many([(other, "hidden", torch.ones(2), False), (refused, "hidden", big, False)])
    client = redis.Redis.from_url(config.redis_url)
    assert not client.exists(edge_key(refused.job_id, "thinker", "hidden"))
    plain.emit(other, "hidden", torch.ones(2))
    assert [int(f[b"seq"]) for _, f in client.xrange(edge_key(other.job_id, "thinker", "hidden"))] == [0]


def _omni(spec, models_dir, stage: str, config=None, streams: bool = True):
    from omnijobs.engines.factory import create_engine

    stage_spec = spec.stage(stage) if streams else spec.stage(stage).model_copy(update={"streams": {}})
    e = create_engine(stage_spec, "cpu", models_dir,
                      **({"chunks": ChunkStreams(config, spec, stage)} if config is not None else {}))
    e.load()
    return e


def _thoughts(jobs, max_tokens):
    return [StageRequest(f"t-{j}", {"prompt": f"say {k}", "modalities": ["text", "audio"]},
                         {"max_tokens": n, "seed": k, "temperature": 0.7}, j)
            for k, (j, n) in enumerate(zip(jobs, max_tokens))]


def _talks(jobs, hidden=None, max_tokens: int = 24):
    return [StageRequest(f"k-{j}", {"hidden": None if hidden is None else hidden[k]},
                         {"max_tokens": max_tokens, "min_tokens": max_tokens, "seed": k}, j)
            for k, j in enumerate(jobs)]


@pytest.fixture(params=["qwen3_omni", "qwen2_5_omni"])
def omni_spec(request):
    return load_registry().get(request.param)


def test_thinker_streams_its_states_and_the_talker_speaks_them_as_they_come(config, omni_spec, models_dir):
    from omnijobs.engines.hidden_stream import joined_handoff

    spec = omni_spec

    thinker = _omni(spec, models_dir, "thinker", config)
    talker = _omni(spec, models_dir, "talker", config)
    # Reply lengths differ within the batch: each row's stream ends at its own max_tokens.
    jobs = [f"hs-{k}-{time.time_ns()}" for k in range(3)]
    talked: list = []
    # The talker runs first, as a run started beside the thinker does: its rows wait for the states.
    speaker = threading.Thread(target=lambda: talked.extend(talker.run(_talks(jobs))), daemon=True)
    speaker.start()
    time.sleep(0.2)
    thought = thinker.run(_thoughts(jobs, [3, 9, 14]))
    speaker.join(120)
    assert not speaker.is_alive()
    reader = ChunkStreams(config, spec, "talker")
    for job, t in zip(jobs, thought):
        edge = reader.open(job, "thinker.hidden")
        reader.read([edge], 100)
        # The prompt part, reply parts of first_chunk tokens then chunk (the last one shorter), the end mark.
        sizes = [c["reply_ids"].shape[0] for c in edge.chunks[1:-1]]
        n = t["hidden"]["reply_ids"].shape[0]
        assert edge.ended and edge.chunks[-1] is None and sum(sizes) == n
        assert sizes == [b - a for a, b in zip([0, *schedule(n, StreamSpec(chunk=4, first_chunk=2))],
                                               schedule(n, StreamSpec(chunk=4, first_chunk=2)))]
        joined = joined_handoff(edge.chunks[:-1])
        assert joined.keys() == t["hidden"].keys()
        for key, value in t["hidden"].items():
            assert torch.equal(joined[key], value), key  # the recorded bundle, exactly
    # The same rows spoken from the recorded states: the same codes.
    plain = _omni(spec, models_dir, "talker", streams=False)
    recorded = plain.run(_talks(jobs, [t["hidden"] for t in thought]))
    for streamed, ref in zip(talked, recorded):
        assert not isinstance(streamed, BaseException), streamed
        assert torch.equal(streamed["codes"]["codes"], ref["codes"]["codes"])


def test_a_row_waiting_for_its_text_is_parked_while_the_others_speak(config, omni_spec, models_dir):
    from omnijobs.engines.hidden_stream import PORT, prompt_of, reply_of

    spec = omni_spec

    thinker = _omni(spec, models_dir, "thinker")
    jobs = [f"pk-{k}-{time.time_ns()}" for k in range(2)]
    thought = thinker.run(_thoughts(jobs, [12, 12]))
    talker = _omni(spec, models_dir, "talker", config)
    writer = ChunkStreams(config, spec, "thinker")
    hidden = thought[1]["hidden"]
    row = req(jobs[1], "t")  # one writer row: one attempt
    writer.emit_many([(row, PORT, prompt_of(hidden), False), (row, PORT, reply_of(hidden, 0, 2), False)])
    talks = _talks(jobs, [thought[0]["hidden"], None], max_tokens=30)
    parked = []

    def trickle():  # the rest of job 1's reply, a state every 40 ms (the talker steps faster)
        while not talker.feeds.feeds or next(iter(talker.feeds.feeds.values())).parked is None:
            time.sleep(0.005)
        parked.append(True)
        for k in range(2, hidden["reply_ids"].shape[0]):
            writer.emit(row, PORT, reply_of(hidden, k, k + 1))
            time.sleep(0.04)
        writer.emit(row, PORT, None, final=True)

    source = threading.Thread(target=trickle, daemon=True)
    source.start()
    out = talker.run(talks)
    source.join(60)
    assert parked  # job 1 waited outside the batch while job 0 went on
    plain = _omni(spec, models_dir, "talker", streams=False)
    ref = plain.run(_talks(jobs, [t["hidden"] for t in thought], max_tokens=30))
    for got, want in zip(out, ref):
        assert not isinstance(got, BaseException), got
        assert torch.equal(got["codes"]["codes"], want["codes"]["codes"])


def test_a_new_thinker_attempt_restarts_the_talker_row_and_its_codes_stream(config, omni_spec, models_dir):
    from omnijobs.engines.hidden_stream import PORT, prompt_of, reply_of, send_handoff

    spec = omni_spec
    decoder = next(name for name, stage in spec.stages.items() if "talker.codes" in stage.inputs.values())

    # The first attempt writes enough reply states for the talker to send the decoder's first chunk
    # of codes (one state per code), then dies.
    sent = spec.stage(decoder).streams["codes"].first_chunk + 2
    thinker = _omni(spec, models_dir, "thinker")
    job = f"rs-{time.time_ns()}"
    dying, = thinker.run(_thoughts([job], [sent + 6]))
    assert dying["hidden"]["reply_ids"].shape[0] > sent
    # The retry draws another reply (another seed): nothing of the first attempt may be in the result.
    retry, = thinker.run([StageRequest("t2", {"prompt": "say 0", "modalities": ["text", "audio"]},
                                       {"max_tokens": 12, "seed": 99, "temperature": 0.7}, job)])
    talker = _omni(spec, models_dir, "talker", config)
    writer = ChunkStreams(config, spec, "thinker")
    first = req(job, "t")  # the first attempt's writer row
    writer.emit_many([(first, PORT, prompt_of(dying["hidden"]), False), (first, PORT, reply_of(dying["hidden"], 0, sent), False)])
    talked = []
    speaker = threading.Thread(target=lambda: talked.extend(talker.run(_talks([job]))), daemon=True)
    speaker.start()
    client = redis.Redis.from_url(config.redis_url)
    codes_key = edge_key(job, "talker", "codes")
    deadline = time.monotonic() + 30
    while not client.exists(codes_key) and time.monotonic() < deadline:  # it spoke from the first attempt
        time.sleep(0.01)
    assert client.exists(codes_key)
    send_handoff(writer, req(job, "t"), retry["hidden"])  # the retry: a new attempt, from its first chunk
    speaker.join(60)
    assert not speaker.is_alive() and not isinstance(talked[0], BaseException), talked
    plain = _omni(spec, models_dir, "talker", streams=False)
    ref, = plain.run(_talks([job], [retry["hidden"]]))
    assert torch.equal(talked[0]["codes"]["codes"], ref["codes"]["codes"])
    # Its codes stream restarted too: a reader ends at the second attempt, holding exactly those codes.
    attempts = {int(f[b"attempt"]) for _, f in client.xrange(codes_key)}
    assert attempts == {1, 2}
    edge = ChunkStreams(config, spec, decoder).open(job, "talker.codes")
    ChunkStreams(config, spec, decoder).read([edge], 100)
    assert edge.attempt == 2 and edge.ended
    streamed = torch.from_numpy(np.concatenate([c for c in edge.chunks if c is not None], axis=1))
    assert torch.equal(streamed, ref["codes"]["codes"].reshape(streamed.shape[0], -1))


def test_a_talker_row_whose_stream_lost_chunks_fails_alone_and_leaves_the_batch(config, omni_spec, models_dir):
    from omnijobs.engines.hidden_stream import PORT, prompt_of, reply_of
    from omnijobs.errors import RetryableStageError
    from omnijobs.streaming.chunks import encode_payload

    spec = omni_spec

    thinker = _omni(spec, models_dir, "thinker")
    job = f"lost-{time.time_ns()}"
    thought, = thinker.run(_thoughts([job], [12]))
    hidden = thought["hidden"]
    writer = ChunkStreams(config, spec, "thinker")
    row = req(job, "t")
    writer.emit_many([(row, PORT, prompt_of(hidden), False), (row, PORT, reply_of(hidden, 0, 3), False)])
    talker = _omni(spec, models_dir, "talker", config)
    talker.add(_talks([job])[0])
    for _ in range(50):  # it joins and speaks up to the text it has
        talker.step()
        if talker.loop.rows and talker.loop.rows[0].starving():
            break
    assert talker.loop.rows and talker.loop.rows[0].starving()
    # The next entry of the attempt skips a sequence number: chunks went missing.
    client = redis.Redis.from_url(config.redis_url)
    key = edge_key(job, "thinker", "hidden")
    assert [int(f[b"attempt"]) for _, f in client.xrange(key)] == [1, 1]  # one attempt for both chunks
    client.xadd(key, {"attempt": 1, "seq": 3, "end": 0, **encode_payload(reply_of(hidden, 3, 4))})
    results = talker.step()
    assert len(results) == 1 and isinstance(results[0][1], RetryableStageError), results
    assert "lost chunks" in str(results[0][1])
    assert talker.loop.rows == [] and talker.feeds.feeds == {}
