"""When streamed decoding decodes what: the first piece at once, later windows paced by the listener."""

from __future__ import annotations

import time

import torch

from omnijobs.engines.base import EngineContext, StageRequest
from omnijobs.engines.chunked_audio import LOW_WATER_S, PLAY_AHEAD_S, ChunkedAudio, _Row
from omnijobs.pipelines.spec import StageSpec

RATE = 1000  # samples per second; 100 samples a frame below


def audio(call_frames=None) -> ChunkedAudio:
    stage = StageSpec(name="dec", engine="x", inputs={"codes": "talker.codes"},
                      streams={"codes": {"chunk": 5, "first_chunk": 3}})
    ctx = EngineContext(stage=stage, device="cpu", model_path=None)
    return ChunkedAudio(ctx, "codes", 1, RATE, decode=None, window=None, max_rows=4, max_window=100,
                        min_window=25, call_frames=call_frames)


def row(frames: int, done: int = 0, ahead_s: float = 0.0, ended: bool = False, now: float = 0.0) -> _Row:
    """A streaming row holding `frames` frames, `done` of them decoded, its listener `ahead_s` ahead."""
    r = _Row(StageRequest(f"r{frames}-{done}", {}, {}), None, torch.zeros((1, frames), dtype=torch.long), ended, 0)
    r.done = done
    if done:
        r.samples = done * 100
        # Playback started so long ago that `ahead_s` of the audio sent is still to play.
        r.began = now - (r.samples / RATE - ahead_s)
    return r


def test_first_piece_as_soon_as_first_chunk_frames_are_there():
    a, now = audio(), time.monotonic()
    assert a._wake_ms(row(2), now) == float("inf")
    assert a._wake_ms(row(3), now) == 0.0
    # The first piece is the first chunk plus the whole chunks behind it.
    assert a._end(row(3)) == 3 and a._end(row(12)) == 3 + 5 and a._end(row(14)) == 3 + 10


def test_later_windows_gather_until_the_listener_needs_them():
    a, now = audio(), time.monotonic()
    # Fewer than decode_min_frames pending: wait, unless the listener is about to run dry.
    assert a._wake_ms(row(3 + 10, 3, ahead_s=0.8, now=now), now) > 0
    assert a._wake_ms(row(3 + 10, 3, ahead_s=LOW_WATER_S - 0.05, now=now), now) <= 0
    assert a._wake_ms(row(3 + 4, 3, ahead_s=0.0, now=now), now) == float("inf")  # not one whole chunk yet
    # A whole window: due once the listener has less than PLAY_AHEAD_S in hand.
    assert a._wake_ms(row(3 + 25, 3, ahead_s=PLAY_AHEAD_S + 0.2, now=now), now) > 0
    assert a._wake_ms(row(3 + 25, 3, ahead_s=PLAY_AHEAD_S - 0.05, now=now), now) <= 0
    # While streaming, windows end on chunk edges; once the stream ended, everything left goes.
    assert a._end(row(3 + 27, 3)) == 3 + 25
    assert a._end(row(3 + 27, 3, ended=True)) == 3 + 27


def test_a_decoder_call_stays_within_its_frame_budget():
    a = audio(call_frames=100)
    big, small, tiny = row(83, 3, ended=True), row(24, 3, ended=True), row(3)
    assert a._call([big, small, tiny]) == [big, tiny]  # 80 + 3; the 21 would go past 100
    alone = row(203, 3, ended=True)
    assert a._call([alone, tiny]) == [alone]  # the most urgent row always goes, at most max_window frames
    assert a._end(alone) == 3 + 100
    assert audio()._call([big, small, tiny]) == [big, small, tiny]  # no budget: max_rows only


def test_a_decoder_with_look_ahead_renders_a_shorter_first_piece_once_the_first_chunk_is_in():
    # Stream chunks of 22 then 50; the decoder renders 10 first and needs 12 frames beyond a piece.
    stage = StageSpec(name="dec", engine="x", inputs={"codes": "talker.codes"},
                      streams={"codes": {"chunk": 50, "first_chunk": 22}})
    ctx = EngineContext(stage=stage, device="cpu", model_path=None)
    a = ChunkedAudio(ctx, "codes", 1, RATE, decode=None, window=None, lookahead=12, first_piece=10)
    now = time.monotonic()
    assert a._wake_ms(row(21), now) == float("inf")
    assert a._wake_ms(row(22), now) == 0.0 and a._end(row(22)) == 10
    # The next piece is a whole chunk of 50, ready once the second stream chunk (to frame 72) is in.
    assert a._end(row(71, 10, ended=False)) == 10 and a._end(row(72, 10)) == 60
