"""Qwen2.5-Omni token2wav piece by piece: the audio of a stream's chunks, rendered as they arrive.

The DiT attends across blocks (look-back and look-ahead layers) at every one of its ODE
evaluations, and BigVGAN is not causal, so no window of codes renders exactly what the whole
sequence does. Here the new frames of each decoder call (a **tile**) are solved together with
`left` frames before them and `right` frames after them (the look-ahead the stream waits for),
and BigVGAN runs on the tile's mel plus `vocoder_context` frames either side; the tiles' audio is
joined at exact sample boundaries. Every tile of a call, of every job, is one row of ONE DiT solve.

A tile's initial noise is the slice, at its frame positions, of the very noise the whole render
draws from the row's seed (`row_noise`), and its attention blocks are counted from the sequence's
start, so neither the noise nor the blocks depend on how frames were grouped or batched; with
enough context the joined tiles approach the whole render (loadtest/token2wav_tiles.py measures
how close).

`Tiling.fixed` cuts the sequence into fixed tiles on the chunk schedule instead (`first_chunk`
frames, then `chunk` each), whatever frames a call brings: a tile's audio then depends only on the
codes around it and the row's seed, never on the grouping, so a retried render repeats what
listeners hold (to float rounding). It costs one solve per tile where a row catches up many chunks
at once, and a tile solved twice wherever a call ends inside one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from omnijobs.engines.base import EngineContext, RowResult, StageRequest
from omnijobs.engines.chunked_audio import IDLE_WAIT_MS, MAX_WINDOW, STEP_WAIT_MS, ChunkedAudio, Window
from omnijobs.engines.token2wav import MelRow, SpeakerCondition, sample_mels, vocode
from omnijobs.errors import FatalStageError, RetryableStageError
from omnijobs.streaming.chunks import EdgeStream


@dataclass(frozen=True)
class Tiling:
    """What a tile is and how much context it is rendered with (all in codec frames)."""

    first_chunk: int
    chunk: int
    left: int  # DiT frames before the tile
    right: int  # DiT frames after the tile: the look-ahead a tile waits for
    vocoder_context: int  # mel frames (in codec frames) BigVGAN sees on each side of the tile
    # False: each decoder call's new frames are one tile instead. Cheaper where a row catches up
    # many chunks in one call (one solve, not one per chunk), but its audio then depends on how the
    # frames were grouped, so a retried render need not repeat what listeners already hold.
    fixed: bool = True

    def tile_of(self, frame: int) -> tuple[int, int]:
        """The tile holding `frame`: [start, end) on the fixed grid."""
        if frame < self.first_chunk:
            return 0, self.first_chunk
        k = (frame - self.first_chunk) // self.chunk
        start = self.first_chunk + k * self.chunk
        return start, start + self.chunk

    def tiles(self, start: int, end: int) -> list[tuple[int, int]]:
        """The grid tiles that frames [start, end) touch."""
        if not self.fixed:
            return [(start, end)]
        out, at = [], start
        while at < end:
            tile = self.tile_of(at)
            out.append(tile)
            at = tile[1]
        return out

    def window(self, start: int, end: int, total: int) -> tuple[int, int]:
        """The frames [first, last) every tile of new frames [start, end) needs, of `total` held."""
        tiles = self.tiles(start, end)
        return max(0, tiles[0][0] - self.left), min(total, tiles[-1][1] + self.right)


@dataclass
class Piece:
    """New frames [start, end) of one row to render, given its codes [first, last)."""

    codes: torch.Tensor  # (last - first,) codec ids
    first: int
    last: int
    start: int
    end: int
    speaker: SpeakerCondition
    seed: int
    steps: int


def row_seed(seed, run_id: str) -> int:
    """The row's seed; an unseeded row gets one from its run id, the same for every chunk and retry."""
    if seed is not None:
        return int(seed)
    return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def row_noise(seed: int, frames: int, repeats: int, mel_dim: int) -> torch.Tensor:
    """The initial noise of a row's first `frames` frames, (frames·repeats, mel_dim).

    NOTE: the same draw as the whole render's `randn((T·repeats, mel_dim), generator)`: a CPU
    generator's normal draws of a multiple of 16 values form one sequence whatever the length, so
    this is a prefix of the whole row's noise (tested), and a tile's noise is that of its positions.
    """
    return torch.randn((frames * repeats, mel_dim), generator=torch.Generator("cpu").manual_seed(seed))


@dataclass
class _Tile:
    piece: int  # index into the pieces
    ctx: tuple[int, int]  # DiT frames
    tile: tuple[int, int]
    emit: tuple[int, int]  # frames whose audio this tile gives


@torch.no_grad()
def render_pieces(model, pieces: list[Piece], tiling: Tiling, on_eval=None) -> list[np.ndarray]:
    """Each piece's float samples (frames start..end), every tile of every piece in one DiT solve
    per step count and as few BigVGAN calls as lengths allow."""
    dit, bigvgan = model.code2wav_dit_model, model.code2wav_bigvgan_model
    per_frame = frame_samples(model)
    tiles: list[_Tile] = []
    for k, p in enumerate(pieces):
        for t in tiling.tiles(p.start, p.end):
            ctx = (max(p.first, t[0] - tiling.left), min(p.last, t[1] + tiling.right))
            tiles.append(_Tile(k, ctx, t, (max(t[0], p.start), min(t[1], p.end))))
    noises = [row_noise(p.seed, p.last, dit.repeats, dit.mel_dim) for p in pieces]
    device = dit.proj_out.weight.device
    mels: list[torch.Tensor | None] = [None] * len(tiles)
    for steps in sorted({p.steps for p in pieces}):
        which = [j for j, t in enumerate(tiles) if pieces[t.piece].steps == steps]
        rows = []
        for j in which:
            t, p = tiles[j], pieces[tiles[j].piece]
            a, b = t.ctx
            rows.append(MelRow(p.codes[a - p.first: b - p.first].to(device), p.speaker, None, offset=a,
                               noise=noises[t.piece][a * dit.repeats: b * dit.repeats]))
        for j, mel in zip(which, sample_mels(dit, rows, steps, on_eval=on_eval), strict=True):
            mels[j] = mel
    spans, cuts = [], []
    for t, mel in zip(tiles, mels, strict=True):
        a, b = max(t.ctx[0], t.tile[0] - tiling.vocoder_context), min(t.ctx[1], t.tile[1] + tiling.vocoder_context)
        spans.append(mel[:, (a - t.ctx[0]) * dit.repeats: (b - t.ctx[0]) * dit.repeats])
        cuts.append(((t.emit[0] - a) * per_frame, (t.emit[1] - a) * per_frame))
    wavs = vocode(bigvgan, spans)
    out: list[list[np.ndarray]] = [[] for _ in pieces]
    for t, wav, (s, e) in zip(tiles, wavs, cuts, strict=True):
        out[t.piece].append(wav[s:e].float().cpu().numpy())
    return [np.concatenate(parts) if parts else np.zeros(0, np.float32) for parts in out]


def frame_samples(model) -> int:
    """Samples of audio per codec frame (the DiT's repeats times BigVGAN's upsampling)."""
    return int(model.code2wav_dit_model.repeats * np.prod(model.config.bigvgan_config.upsample_rates))


class StreamedToken2Wav:
    """The rows of a streamed token2wav stage: each waits for its voice, then its codes are rendered
    tile by tile as they arrive (ChunkedAudio: many jobs' chunks per call, audio events, the stored
    WAV is the joined chunks).

    The voice (`speaker`) is the talker's param, and the talker's recorded output only once it has
    ended: a streamed row reads it from the talker's one-chunk `speaker` stream, which the talker
    writes before any code. A row joins the decoding once its voice is known.
    """

    def __init__(self, ctx: EngineContext, model, speakers: dict[str, SpeakerCondition], tiling: Tiling,
                 rate: int, max_rows: int, call_frames: int | None = None, max_window: int = MAX_WINDOW):
        self.ctx, self.model, self.speakers, self.tiling = ctx, model, speakers, tiling
        self.per_frame = frame_samples(model)
        self.vocab = model.config.dit_config.num_embeds
        self.audio = ChunkedAudio(ctx, "codes", 1, rate, self._decode, self._window, lookahead=tiling.right,
                                  max_rows=max_rows, first_piece=tiling.first_chunk, call_frames=call_frames,
                                  max_window=max_window)
        self.voices: dict[str, SpeakerCondition] = {}
        self.parked: dict[str, tuple[StageRequest, torch.Tensor | None, EdgeStream]] = {}

    def add(self, req: StageRequest, codes: torch.Tensor | None) -> RowResult | None:
        """One row: its recorded (1, T) codes, or None to read the talker's stream."""
        name = req.inputs.get("speaker")
        if name is None and self.ctx.chunks is not None and "speaker" in self.ctx.stage.streams:
            self.parked[req.run_id] = (req, codes, self.ctx.chunks.open(req.job_id, self.ctx.stage.inputs["speaker"]))
            return None
        return self._admit(req, codes, str(name or req.params.get("speaker") or "Chelsie"))

    def step(self, wait_ms: int = STEP_WAIT_MS) -> list[tuple[StageRequest, RowResult]]:
        ended = self._unpark(1 if self.audio.rows else wait_ms)
        ended += self.audio.step(wait_ms)
        for req, _ in ended:
            self.voices.pop(req.run_id, None)
        return ended

    def abort(self, run_ids) -> list[tuple[StageRequest, RowResult]]:
        run_ids = list(run_ids)
        gone = [self.parked.pop(r) for r in run_ids if r in self.parked]
        if gone:
            self.ctx.chunks.done([edge for _, _, edge in gone])
        ended = [(req, FatalStageError("canceled")) for req, _, _ in gone] + self.audio.abort(run_ids)
        for req, _ in ended:
            self.voices.pop(req.run_id, None)
        return ended

    def run(self, batch: list[StageRequest], codes: list[torch.Tensor | None | BaseException]) -> list[RowResult]:
        """A whole batch at once (the batch worker's way); `codes` per row as `add` takes them, or its error."""
        results: list[RowResult | None] = [c if isinstance(c, BaseException) else None for c in codes]
        index = {}
        for i, (req, c) in enumerate(zip(batch, codes, strict=True)):
            if results[i] is None:
                results[i] = self.add(req, c)
                if results[i] is None:
                    index[req.run_id] = i
        try:
            while index:
                ended = self.abort([r for r in index if self.ctx.should_stop(r)]) + self.step(IDLE_WAIT_MS)
                for req, result in ended:
                    results[index.pop(req.run_id)] = result
        finally:
            self.abort(list(index))
        return results

    # ------------------------------------------------------------------ inside

    def _admit(self, req: StageRequest, codes: torch.Tensor | None, name: str) -> RowResult | None:
        if name not in self.speakers:
            return FatalStageError(f"unknown speaker {name!r}; this model has {', '.join(sorted(self.speakers))}")
        self.voices[req.run_id] = self.speakers[name]
        error = self.audio.add(req, codes)
        if error is not None:
            self.voices.pop(req.run_id, None)
        return error

    def _unpark(self, wait_ms: int) -> list[tuple[StageRequest, RowResult]]:
        if not self.parked:
            return []
        self.ctx.chunks.read([edge for _, _, edge in self.parked.values()], wait_ms)
        ended = []
        for run_id, (req, codes, edge) in list(self.parked.items()):
            if not (edge.lost or (edge.chunks and edge.chunks[0] is not None)):
                continue
            del self.parked[run_id]
            self.ctx.chunks.done([edge])
            error = RetryableStageError(edge.lost) if edge.lost else self._admit(
                req, codes, edge.chunks[0].tobytes().decode(errors="replace"))
            if error is not None:
                ended.append((req, error))
        return ended

    def _window(self, start: int, end: int, total: int) -> tuple[int, int, int, int]:
        first, last = self.tiling.window(start, end, total)
        return first, last, (start - first) * self.per_frame, (end - first) * self.per_frame

    def _decode(self, windows: list[Window]) -> list[np.ndarray]:
        pieces = []
        for w in windows:
            codes = w.codes[0]
            if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.vocab):
                raise FatalStageError(f"speech codes outside the codebook (0..{self.vocab - 1})")
            pieces.append(Piece(codes, w.first, w.last, w.start, w.end, self.voices[w.req.run_id],
                                row_seed(w.req.params.get("seed"), w.req.run_id), int(w.req.params.get("num_steps", 10))))
        return render_pieces(self.model, pieces, self.tiling)
