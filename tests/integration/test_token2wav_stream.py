"""Qwen2.5-Omni token2wav rendered tile by tile (the streamed stage), on the tiny real-class model:
the joined tiles against the whole render, independence from how frames were grouped, and the
talker streaming its codes and voice into token2wav over real Redis."""

from __future__ import annotations

import base64
import dataclasses
import io
import threading
import time
import wave

import numpy as np
import pytest
import redis
import torch

from omnijobs.engines.base import StageRequest
from omnijobs.engines.token2wav_stream import Piece, Tiling, render_pieces
from omnijobs.errors import FatalStageError
from omnijobs.pipelines import load_registry
from omnijobs.pipelines.spec import StreamSpec
from omnijobs.streaming.channel import ChannelConfig, channel_key, decode
from omnijobs.streaming.chunks import ChunkStreams, edge_key


@pytest.fixture(scope="module")
def spec():
    """qwen2_5_omni with its talker → token2wav edge streamed (as the engine supports, whatever the
    shipped file says)."""
    spec = load_registry().get("qwen2_5_omni")
    streams = {"codes": StreamSpec(chunk=25, first_chunk=10), "speaker": StreamSpec(chunk=1)}
    token2wav = spec.stages["token2wav"].model_copy(update={"streams": streams})
    return spec.model_copy(update={"stages": {**spec.stages, "token2wav": token2wav}})


def _engine(spec, models_dir, stage: str, streamed: bool = True, **kw):
    from omnijobs.engines.factory import create_engine

    s = spec.stage(stage)
    e = create_engine(s if streamed else s.model_copy(update={"streams": {}}), "cpu", models_dir, **kw)
    e.load()
    return e


@pytest.fixture(scope="module")
def whole(spec, models_dir):
    return _engine(spec, models_dir, "token2wav", streamed=False)


@pytest.fixture(scope="module")
def tiled(spec, models_dir):
    return _engine(spec, models_dir, "token2wav")


def _pcm(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def codes(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 92, (n,), generator=torch.Generator().manual_seed(seed))


def request(run: str, n: int, seed: int, speaker: str = "Chelsie", steps: int = 10) -> StageRequest:
    return StageRequest(run, {"codes": {"codes": codes(n, seed)}, "speaker": speaker}, {"num_steps": steps, "seed": seed})


def test_tiles_join_to_the_whole_render_of_the_same_codes_and_seed(whole, tiled):
    # Shorter than the first tile, on the grid, off it, and longer than one decoder window (300).
    batch = [request("a", 7, 1), request("b", 60, 2, "Ethan"), request("c", 77, 3), request("d", 333, 4, steps=6)]
    streamed = tiled.run(batch)
    rendered = whole.run(batch)
    # Only the streamed stage takes rows one by one (the worker's continuous loop).
    assert callable(getattr(tiled, "step", None)) and getattr(whole, "step", None) is None
    for req, s, w in zip(batch, streamed, rendered, strict=True):
        n = req.inputs["codes"]["codes"].shape[0]
        a, b = _pcm(s["audio"].data).astype(int), _pcm(w["audio"].data).astype(int)
        assert len(a) == len(b) == 480 * n
        # The tiny model's DiT barely reaches past a block, so 12 frames of context on each side
        # give the whole render's samples (to one 16-bit step).
        assert np.abs(a - b).max() <= 1
        assert s["usage"]["samples"] == 480 * n


def test_fixed_tiles_do_not_depend_on_how_frames_came(tiled):
    """The same row cut into decoder calls three ways, alone and beside another row: the same samples."""
    model, voice = tiled.model, tiled.speakers["Ethan"]
    tiling = dataclasses.replace(tiled.streamed.tiling, fixed=True)
    row = codes(130, 9)

    def render(bounds: list[int], mate: bool = False) -> np.ndarray:
        out = []
        for start, end in zip([0, *bounds], bounds):
            last = min(130, tiling.window(start, end, 130)[1])
            pieces = [Piece(row[:last], 0, last, start, end, voice, 11, 10)]
            if mate:
                pieces.append(Piece(codes(40, 1), 0, 40, 0, 40, tiled.speakers["Chelsie"], 1, 10))
            out.append(render_pieces(model, pieces, tiling)[0])
        return np.concatenate(out)

    once = render([130])
    assert once.shape == (130 * 480,)
    for bounds, mate in (([10, 35, 60, 85, 110, 130], False), ([20, 60, 130], True), ([10, 100, 130], True)):
        assert np.abs(render(bounds, mate) - once).max() < 1e-5, bounds


def test_a_calls_frames_are_one_tile_with_its_context(tiled):
    tiling = tiled.streamed.tiling
    assert isinstance(tiling, Tiling) and not tiling.fixed and tiling.right == tiled.streamed.audio.lookahead
    first, last, skip, keep = tiled.streamed._window(20, 45, 500)
    assert (first, last) == (max(0, 20 - tiling.left), 45 + tiling.right)
    assert (keep - skip) == 25 * 480 and skip == (20 - first) * 480
    assert tiled.streamed._window(20, 45, 50)[1] == 50  # no more look-ahead than frames at the end


def test_calls_cut_anywhere_join_to_the_whole_render(tiled, whole):
    """Each call's frames solved with their context, however the row was cut: the whole render's
    audio (the tiny DiT barely mixes across blocks, so to one 16-bit step)."""
    model, voice, tiling = tiled.model, tiled.speakers["Chelsie"], tiled.streamed.tiling
    row = codes(150, 4)
    rendered = _pcm(whole.run([StageRequest("p", {"codes": {"codes": row}, "speaker": "Chelsie"},
                                            {"seed": 3})])[0]["audio"].data).astype(int)
    for bounds in ([150], [10, 35, 60, 85, 110, 135, 150], [20, 70, 150], [7, 8, 100, 150]):
        parts = []
        for start, end in zip([0, *bounds], bounds):
            first, last = tiling.window(start, end, 150)
            parts.append(render_pieces(model, [Piece(row[first:last], first, last, start, end, voice, 3, 10)],
                                       tiling)[0])
        joined = np.concatenate(parts)
        assert len(joined) == 150 * 480
        pcm = np.rint(np.clip(joined, -1, 1) * 32767).astype(int)
        assert np.abs(pcm - rendered).max() <= 1, bounds


def test_bad_rows_fail_alone(tiled):
    out = tiled.run([request("ok", 12, 1), request("who", 12, 1, speaker="Nobody"),
                     StageRequest("far", {"codes": {"codes": codes(12, 1) + 1000}, "speaker": "Chelsie"}, {}),
                     StageRequest("flat", {"codes": {"codes": codes(12, 1).reshape(3, 4)}, "speaker": "Chelsie"}, {})])
    assert out[0]["usage"]["samples"] == 12 * 480
    assert isinstance(out[1], FatalStageError) and "Nobody" in str(out[1])
    assert isinstance(out[2], FatalStageError) and "codebook" in str(out[2])
    assert isinstance(out[3], FatalStageError) and "(T,)" in str(out[3])


def test_the_talker_streams_codes_and_voice_into_token2wav_which_renders_jobs_together(spec, models_dir, redis_url,
                                                                                        whole):
    config = ChannelConfig(redis_url, ended_ttl_s=7)
    thinker = _engine(spec, models_dir, "thinker")
    talker = _engine(spec, models_dir, "talker", chunks=ChunkStreams(config, spec, "talker"))
    token2wav = _engine(spec, models_dir, "token2wav", chunks=ChunkStreams(config, spec, "token2wav"))
    jobs = [f"t2w-job-{k}" for k in range(3)]
    voices = ["Chelsie", "Ethan", "Chelsie"]
    thought = thinker.run([StageRequest(f"t{k}", {"prompt": f"say {k}", "modalities": ["text", "audio"]},
                                        {"max_tokens": 4, "seed": k}, j) for k, j in enumerate(jobs)])
    talk = [StageRequest(f"k{k}", {"hidden": t["hidden"]},
                         {"max_tokens": 90, "min_tokens": 80, "seed": k, "speaker": voices[k]}, j)
            for k, (t, j) in enumerate(zip(thought, jobs, strict=True))]
    talked: list = []
    speaking = threading.Thread(target=lambda: (time.sleep(0.3), talked.extend(talker.run(talk))))
    speaking.start()
    # token2wav starts before the talker has written anything (as a streamed run does): it learns
    # each row's voice from the talker's speaker stream, then reads the codes along.
    wavs = token2wav.run([StageRequest(f"w{k}", {"codes": None, "speaker": None}, {"seed": 20 + k}, j)
                          for k, j in enumerate(jobs)])
    speaking.join()
    client = redis.Redis.from_url(redis_url)
    for k, (job, out) in enumerate(zip(jobs, wavs, strict=True)):
        assert not isinstance(out, BaseException), out
        audio = [d for kind, d in (decode(f) for _, f in client.xrange(channel_key(job))) if kind == "audio"]
        assert client.xlen(edge_key(job, "talker", "codes")) >= 2
        assert audio and audio[0]["offset"] == 0 and audio[-1]["final"]
        stored = _pcm(out["audio"].data)
        assert b"".join(base64.b64decode(d["audio"]) for d in audio) == stored.tobytes()
        # The talker's codes and voice rendered whole, with the same seed: the same audio.
        recorded = talked[k]["codes"]["codes"]
        assert talked[k]["speaker"] == voices[k]
        rendered = _pcm(whole.run([StageRequest("p", {"codes": {"codes": recorded}, "speaker": voices[k]},
                                                {"seed": 20 + k})])[0]["audio"].data)
        assert len(stored) == 480 * recorded.shape[0]
        assert np.abs(rendered.astype(int) - stored.astype(int)).max() <= 1
        assert out["usage"]["decode_rows_max"] > 1  # chunks of several jobs in one render call
    assert len({_pcm(o["audio"].data).tobytes() for o in wavs}) == 3


def test_a_row_waiting_for_its_voice_can_be_canceled(spec, models_dir, redis_url):
    config = ChannelConfig(redis_url, ended_ttl_s=7)
    token2wav = _engine(spec, models_dir, "token2wav", chunks=ChunkStreams(config, spec, "token2wav"))
    req = StageRequest("lonely", {"codes": None, "speaker": None}, {}, "t2w-no-talker")
    assert token2wav.add(req) is None
    assert token2wav.step() == []  # no talker: no voice, nothing to render
    ended = token2wav.abort(["lonely"])
    assert [(r.run_id, str(e)) for r, e in ended] == [("lonely", "canceled")]
    assert token2wav.streamed.parked == {} and token2wav.streamed.voices == {}
