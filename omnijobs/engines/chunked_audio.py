"""Codec frames to audio chunk by chunk, many jobs per decoder call, from a stream or a recorded input.

Rows join and leave one by one (`add`, `step`, `abort`), so a worker can keep decoding the rows it
has while new jobs' streams start: the continuous loop feeds it from the queue, and `run` serves a
plain batch the same way. Each step reads whatever frames the rows' streams gained, then decodes
the pending frames of the rows that are due (`first_chunk` frames first, each once `lookahead`
frames beyond it exist; then whole chunks, paced by how much audio the row's listener has in hand;
all that is left once the upstream's end mark came) in ONE batched decoder call, the rows that have
played least first. Each decoded piece goes out at once
as an `audio` event (16-bit PCM, base64, with its sample offset), and the stored WAV is exactly
those pieces joined, so a client that listened holds the same samples as the recorded output.

A restarted stream (the upstream's attempt died and a new one began) drops what was decoded for
that job and tells its listeners with a `restart` event; so does a downstream run that reads an
edge some earlier run of it already read (it is a retry: its audio is sent again from offset 0).
"""

from __future__ import annotations

import base64
import io
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from omnijobs.engines.base import EngineContext, Media, RowResult, StageRequest
from omnijobs.errors import FatalStageError, RetryableStageError
from omnijobs.streaming.chunks import AUDIO, RESTART, EdgeStream

# Read wait while no row has frames to decode. A new chunk ends the wait at once; the bound is how
# long a job that arrives meanwhile waits to join (the continuous loop admits between steps).
STEP_WAIT_MS = 20
# Batch mode (`run`) waits longer: nothing can join, only a cancel must be noticed soon.
IDLE_WAIT_MS = 500
# At most this many frames per row per decoder call by default (a row that fell behind, or a
# recorded input, is decoded in pieces).
MAX_WINDOW = 300
# After the first piece, a row's next piece is decoded once the audio sent is less than this far
# ahead of a player that started with the first piece; until then its chunks gather into one
# window. Every window is decoded with left context, so fewer, longer windows cost less compute,
# and a listener still never runs dry (a row whose upstream ended is finished at once).
PLAY_AHEAD_S = 1.0
# ...unless the listener is about to run dry (less than this much audio ahead of it): then whatever
# whole chunks have come are decoded at once, however few.
LOW_WATER_S = 0.3


@dataclass
class Window:
    """One row's part of a decoder call: decode `codes` (frames first..last) and keep samples
    [skip:keep] of the result, the audio of the row's new frames start..end."""

    req: StageRequest
    codes: torch.Tensor  # (groups, last - first)
    first: int
    last: int
    start: int
    end: int
    skip: int
    keep: int


@dataclass
class _Row:
    req: StageRequest
    edge: EdgeStream | None
    frames: torch.Tensor  # (G, n) received so far
    ended: bool
    order: int
    opened: EdgeStream | None = None  # a recorded row's edge, opened to learn whether it is a retry
    taken: int = 0  # chunks of the edge already in `frames`
    done: int = 0  # frames decoded
    pcm: list[bytes] = field(default_factory=list)
    samples: int = 0
    calls: int = 0  # decoder calls this row was in, and the rows of those calls
    call_rows: list[int] = field(default_factory=list)
    began: float = 0.0  # when its first piece went out (monotonic)

    def reset(self, groups: int) -> None:
        self.frames, self.taken, self.done, self.pcm, self.samples = torch.zeros((groups, 0), dtype=torch.long), 0, 0, [], 0


def pcm16(samples: np.ndarray) -> bytes:
    """The same 16-bit steps `encode_wav` writes (clipped, NaN silent, rounded)."""
    samples = np.nan_to_num(np.asarray(samples, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.rint(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def wav_of(pcm: bytes, rate: int) -> Media:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return Media(buf.getvalue(), "audio/wav")


class ChunkedAudio:
    """The streamed decoding of a stage's rows.

    `window(start, end, total)` says what to decode for new frames start..end of a row holding
    `total` frames: (first, last, skip, keep), see Window. `decode(windows)` decodes them all in one
    call and returns, per window, its float samples [skip:keep].
    """

    def __init__(self, ctx: EngineContext, port: str, groups: int, rate: int,
                 decode: Callable[[list[Window]], list[np.ndarray]],
                 window: Callable[[int, int, int], tuple[int, int, int, int]],
                 lookahead: int = 0, max_rows: int = 64, max_window: int = MAX_WINDOW, min_window: int = 0,
                 call_frames: int | None = None, first_piece: int | None = None):
        self.ctx, self.port, self.groups, self.rate = ctx, port, groups, rate
        self.decode, self.window, self.lookahead, self.max_rows = decode, window, lookahead, max_rows
        # New frames one decoder call takes, all its rows together (None: max_rows × max_window).
        self.max_window, self.call_frames = max_window, call_frames
        stream = ctx.stage.streams.get(port)
        self.chunk = stream.chunk if stream else max_window
        # The first piece's frames: the stream's first chunk, unless the decoder renders a shorter
        # one (a decoder with look-ahead gets its first chunk long enough to render it at once).
        self.first = first_piece or ((stream.first_chunk or stream.chunk) if stream else max_window)
        # After the first piece, windows of at least this many frames (each pays its left context
        # once), in whole chunks of the stream.
        self.window_min = max(self.chunk, -(-min_window // self.chunk) * self.chunk)
        # Audio events only for stages that stream (their clients listen for them).
        self.events = ctx.chunks if stream is not None else None
        self.rows: dict[str, _Row] = {}
        self._restarts: list[_Row] = []
        self._admitted = 0

    # ------------------------------------------------------------------ rows in and out

    def add(self, req: StageRequest, recorded: torch.Tensor | None = None) -> RowResult | None:
        """Take one row: its recorded frames, or (None) the upstream's stream. Returns the error that
        fails it alone, or None once it is taken."""
        if req.run_id in self.rows:
            return None
        if recorded is not None:
            row = _Row(req, None, recorded.long(), True, self._admitted)
            # A retry after the upstream ended decodes its recorded output, but listeners may hold
            # audio of an earlier run of this stage: they are told to drop it all the same.
            if self.events is not None:
                row.opened = self.events.open(req.job_id, self.ctx.stage.inputs[self.port])
                if row.opened.restarted:
                    self._restarts.append(row)
        elif self.ctx.chunks is None:
            return FatalStageError(
                f"input '{self.port}' is streamed from {self.ctx.stage.inputs[self.port]}, which needs a Redis "
                "broker (the stream's transport); without one, drop `streams:` from the pipeline")
        else:
            edge = self.ctx.chunks.open(req.job_id, self.ctx.stage.inputs[self.port])
            row = _Row(req, edge, torch.zeros((self.groups, 0), dtype=torch.long), False, self._admitted)
            if edge.restarted:
                self._restarts.append(row)
        self._admitted += 1
        self.rows[req.run_id] = row
        return None

    def abort(self, run_ids) -> list[tuple[StageRequest, RowResult]]:
        """Drop these rows (canceled, overdue); each ends as canceled."""
        gone = [self.rows[r] for r in run_ids if r in self.rows]
        self._release(gone)
        return [(r.req, FatalStageError("canceled")) for r in gone]

    def step(self, wait_ms: int = STEP_WAIT_MS) -> list[tuple[StageRequest, RowResult]]:
        """Read the streams, decode what is due in one call; the rows that ended, with their results."""
        self._restart()
        rows = list(self.rows.values())
        waiting = [r.edge for r in rows if r.edge is not None and not r.edge.ended]
        if waiting:
            now = time.monotonic()
            if any(self._due(r, now) for r in rows):
                wait_ms = 1
            else:  # wake no later than a paced row's turn
                wait_ms = min([wait_ms, *(self._wake_ms(r, now) for r in rows)])
            self.ctx.chunks.read(waiting, max(1, int(wait_ms)))
            self._take(rows)
            self._restart()
        now = time.monotonic()
        due = sorted((r for r in rows if self._due(r, now)), key=lambda r: (r.samples, r.order))
        if due:
            self._decode(self._call(due))
        ended = []
        for r in rows:
            if r.edge is not None and r.edge.lost:
                ended.append((r, RetryableStageError(r.edge.lost)))
            elif r.ended and r.done == r.frames.shape[1]:
                ended.append((r, self._result(r)))
        self._release([r for r, _ in ended])
        return [(r.req, result) for r, result in ended]

    def run(self, batch: list[StageRequest], recorded: dict[int, torch.Tensor]) -> list[RowResult]:
        """A whole batch at once (the batch worker's way): `recorded` holds the rows whose frames are
        known (by batch index); the others read the stream."""
        results: list[RowResult | None] = [None] * len(batch)
        index = {}
        for i, req in enumerate(batch):
            error = self.add(req, recorded.get(i))
            if error is not None:
                results[i] = error
            else:
                index[req.run_id] = i
        try:
            while self.rows:
                ended = self.abort([r for r in self.rows if self.ctx.should_stop(r)])
                ended += self.step(IDLE_WAIT_MS)
                for req, result in ended:
                    results[index[req.run_id]] = result
        finally:
            self._release(list(self.rows.values()))
        return results

    # ------------------------------------------------------------------ inside

    def _release(self, rows: list[_Row]) -> None:
        for r in rows:
            self.rows.pop(r.req.run_id, None)
        edges = [e for r in rows for e in (r.edge, r.opened) if e is not None]
        if edges and self.ctx.chunks is not None:
            self.ctx.chunks.done(edges)

    def _take(self, rows: list[_Row]) -> None:
        """Move newly read chunks into the rows; a row whose stream restarted starts over."""
        for r in rows:
            e = r.edge
            if e is None:
                continue
            if e.restarted:
                self._restarts.append(r)
                r.reset(self.groups)
            new = [torch.as_tensor(c).long() for c in e.chunks[r.taken:] if c is not None]
            if new:
                r.frames = torch.cat([r.frames, *new], dim=1)
            r.taken, r.ended = len(e.chunks), e.ended

    def _restart(self) -> None:
        rows, self._restarts = [r for r in self._restarts if r.req.run_id in self.rows], []
        if rows and self.events is not None:
            self.events.publish(RESTART, [(r.req, {"attempt": r.edge.attempt if r.edge else 0}) for r in rows])
        for r in rows:
            for e in (r.edge, r.opened):
                if e is not None:
                    e.restarted = False

    def _ready(self, r: _Row) -> int:
        """Frames of the row whose audio can be made now (the rest wait for their look-ahead)."""
        n = r.frames.shape[1]
        return n if r.ended else max(n - self.lookahead, 0)

    def _due(self, r: _Row, now: float) -> bool:
        if r.edge is not None and r.edge.lost:
            return False
        pending = self._ready(r) - r.done
        if pending <= 0:
            return False
        if r.ended:
            return True
        return self._wake_ms(r, now) <= 0

    def _wake_ms(self, r: _Row, now: float) -> float:
        """Milliseconds until the row is due (≤ 0: now; inf: it needs more frames first). The first
        piece is due once `first_chunk` frames are ready; later ones once a whole window is ready
        and the audio sent is only PLAY_AHEAD_S ahead of a player that started with the first
        piece, or once any whole chunk is ready and the player is about to run dry."""
        pending = self._ready(r) - r.done
        if r.done == 0:
            return 0.0 if pending >= self.first else float("inf")
        ahead = r.samples / self.rate - (now - r.began)
        if pending >= self.window_min:
            return (ahead - PLAY_AHEAD_S) * 1000.0
        if pending >= self.chunk:
            return (ahead - LOW_WATER_S) * 1000.0
        return float("inf")

    def _end(self, r: _Row) -> int:
        """Where the row's next window ends: whole chunks while the stream runs (so chunk edges
        match the spec), all that is left once it ended; at most max_window frames."""
        pending = self._ready(r) - r.done
        lead = self.first if r.done == 0 else 0
        take = pending if r.ended else lead + (pending - lead) - (pending - lead) % self.chunk
        return r.done + min(take, self.max_window)

    def _call(self, due: list[_Row]) -> list[_Row]:
        """The rows of the next decoder call: the most urgent first, then others while the call
        stays within max_rows rows and call_frames new frames."""
        work, frames = [], 0
        for r in due[: self.max_rows]:
            size = self._end(r) - r.done
            if work and self.call_frames is not None and frames + size > self.call_frames:
                continue
            work.append(r)
            frames += size
        return work

    def _decode(self, work: list[_Row]) -> None:
        windows = []
        for r in work:
            end = self._end(r)
            first, last, skip, keep = self.window(r.done, end, r.frames.shape[1])
            windows.append(Window(r.req, r.frames[:, first:last], first, last, r.done, end, skip, keep))
        pieces = self.decode(windows)
        events = []
        for r, w, piece in zip(work, windows, pieces, strict=True):
            data = pcm16(piece)
            events.append((r.req, {"offset": r.samples, "samples": len(data) // 2, "rate": self.rate,
                                   "format": "pcm_s16le", "attempt": r.edge.attempt if r.edge else 0,
                                   "audio": base64.b64encode(data).decode(),
                                   "final": r.ended and w.end == r.frames.shape[1]}))
            if not r.pcm:
                r.began = time.monotonic()
            r.pcm.append(data)
            r.samples += len(data) // 2
            r.done = w.end
            r.calls += 1
            r.call_rows.append(len(windows))
        if self.events is not None:
            self.events.publish(AUDIO, events)

    def _result(self, r: _Row) -> RowResult:
        if r.frames.shape[1] == 0:
            return FatalStageError("the talker produced no speech codes")
        return {"audio": wav_of(b"".join(r.pcm), self.rate),
                "usage": {"samples": r.samples, "seconds": r.samples / self.rate, "chunks": len(r.pcm),
                          # Rows per decoder call this row was in: how well chunks of many jobs batched.
                          "decode_calls": r.calls, "decode_rows_max": max(r.call_rows, default=0),
                          "decode_rows_mean": round(sum(r.call_rows) / max(r.calls, 1), 3)}}
