"""Where a streamed token2wav row's tiles fall, what each needs, and the seeds of unseeded rows."""

from __future__ import annotations

import torch

from omnijobs.engines.token2wav_stream import Tiling, row_noise, row_seed

TILING = Tiling(first_chunk=10, chunk=25, left=12, right=12, vocoder_context=4)


def test_tiles_are_the_chunk_schedule_whatever_the_frames_asked():
    assert TILING.tiles(0, 10) == [(0, 10)]
    assert TILING.tiles(0, 60) == [(0, 10), (10, 35), (35, 60)]
    # Frames off the grid still come from whole tiles: a tile is never rendered in two shapes.
    assert TILING.tiles(20, 40) == [(10, 35), (35, 60)]
    assert TILING.tile_of(9) == (0, 10) and TILING.tile_of(10) == (10, 35) and TILING.tile_of(299) == (285, 310)


def test_a_window_holds_every_tiles_context_within_the_frames_held():
    assert TILING.window(0, 10, 200) == (0, 22)
    assert TILING.window(10, 35, 200) == (0, 47)
    assert TILING.window(35, 60, 200) == (23, 72)
    # At the end of a row there is no more right context than frames.
    assert TILING.window(35, 50, 50) == (23, 50)
    # Frames 20..40 need tiles 10..35 and 35..60, each with its context.
    assert TILING.window(20, 40, 500) == (0, 72)


def test_unseeded_rows_get_a_seed_of_their_run_the_same_every_time():
    assert row_seed(7, "run-a") == 7
    assert row_seed(None, "run-a") == row_seed(None, "run-a") != row_seed(None, "run-b")
    assert 0 <= row_seed(None, "run-a") < 1 << 63


def test_a_rows_noise_up_to_a_frame_is_the_start_of_the_whole_rows_noise():
    whole = torch.randn((2 * 333, 80), generator=torch.Generator("cpu").manual_seed(5))
    for frames in (1, 10, 35, 332):
        assert torch.equal(row_noise(5, frames, 2, 80), whole[: 2 * frames])


def test_unfixed_tiles_are_each_calls_own_frames():
    calls = Tiling(first_chunk=10, chunk=25, left=24, right=12, vocoder_context=4, fixed=False)
    assert calls.tiles(20, 45) == [(20, 45)]
    assert calls.window(20, 45, 500) == (0, 57)
    assert calls.window(45, 70, 75) == (21, 75)
