"""Codec frames to audio chunk by chunk, many jobs per decoder call, from a stream or a recorded input.

Each round reads whatever frames the batch's streams gained, then decodes the pending frames of
every row that has enough (`first_chunk` frames first, then `chunk`; all that is left once the
upstream's end mark came) in ONE batched decoder call. Each decoded piece goes out at once as an
`audio` event (16-bit PCM, base64, with its sample offset), and the stored WAV is exactly those
pieces joined, so a client that listened holds the same samples as the recorded output.

A restarted stream (the upstream's attempt died and a new one began) drops what was decoded for
that job and tells its listeners with a `restart` event; so does a downstream run that reads an
edge some earlier run of it already read (it is a retry: its audio is sent again from offset 0).
"""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from omnijobs.engines.base import EngineContext, Media, RowResult, StageRequest
from omnijobs.errors import FatalStageError, RetryableStageError
from omnijobs.streaming.chunks import AUDIO, RESTART, EdgeStream

# Read wait while no row has frames to decode: short enough to notice a canceled job soon.
IDLE_WAIT_MS = 500
# At most this many frames per row per decoder call (a row that fell behind catches up in pieces).
MAX_WINDOW = 300


@dataclass
class _Row:
    index: int
    req: StageRequest
    edge: EdgeStream | None
    frames: torch.Tensor  # (G, n) received so far
    ended: bool
    taken: int = 0  # chunks of the edge already in `frames`
    done: int = 0  # frames decoded
    pcm: list[bytes] = field(default_factory=list)
    samples: int = 0

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
    """The streamed-decoding loop of one batch. `decode(windows)` gets [(codes (G, w), skip, keep)] and
    returns, per window, float samples [skip:keep] of decoding those codes, all in one call."""

    def __init__(self, ctx: EngineContext, port: str, groups: int, rate: int,
                 decode: Callable[[list[tuple[torch.Tensor, int, int]]], list[np.ndarray]],
                 window: Callable[[int, int], tuple[int, int, int]]):
        self.ctx, self.port, self.groups, self.rate = ctx, port, groups, rate
        self.decode, self.window = decode, window
        stream = ctx.stage.streams.get(port)
        self.chunk = stream.chunk if stream else MAX_WINDOW
        self.first = (stream.first_chunk or stream.chunk) if stream else MAX_WINDOW
        # Audio events only for stages that stream (their clients listen for them).
        self.events = ctx.chunks if stream is not None else None
        self.rounds: list[int] = []

    def run(self, batch: list[StageRequest], recorded: dict[int, torch.Tensor]) -> list[RowResult]:
        """`recorded`: the rows whose frames are already known (by batch index); others read the stream."""
        results: list[RowResult | None] = [None] * len(batch)
        rows, restarts, opened = [], [], []
        for i, req in enumerate(batch):
            if i in recorded:
                rows.append(_Row(i, req, None, recorded[i], True))
                # A retry after the upstream ended decodes its recorded output, but listeners may
                # hold audio of an earlier run of this stage: they are told to drop it all the same.
                if self.events is not None:
                    opened.append(self.events.open(req.job_id, self.ctx.stage.inputs[self.port]))
                    if opened[-1].restarted:
                        restarts.append(rows[-1])
            elif self.ctx.chunks is None:
                results[i] = FatalStageError(
                    f"input '{self.port}' is streamed from {self.ctx.stage.inputs[self.port]}, which needs a Redis "
                    "broker (the stream's transport); without one, drop `streams:` from the pipeline")
            else:
                edge = self.ctx.chunks.open(req.job_id, self.ctx.stage.inputs[self.port])
                rows.append(_Row(i, req, edge, torch.zeros((self.groups, 0), dtype=torch.long), False))
        restarts += [r for r in rows if r.edge is not None and r.edge.restarted]
        try:
            self._loop(rows, results, restarts)
        finally:
            if self.ctx.chunks is not None:
                self.ctx.chunks.done([*opened, *(r.edge for r in rows if r.edge is not None)])
        return results

    def _loop(self, rows: list[_Row], results: list, restarts: list[_Row]) -> None:
        active = list(rows)
        while active:
            self._restart(restarts)
            restarts = []
            for r in list(active):
                if self.ctx.should_stop(r.req.run_id):
                    results[r.index] = FatalStageError("canceled")
                    active.remove(r)
            work = [r for r in active if self._due(r)]
            waiting = [r.edge for r in active if r.edge is not None and not r.edge.ended]
            if waiting:
                try:
                    self.ctx.chunks.read(waiting, 1 if work else IDLE_WAIT_MS)
                except LookupError as exc:
                    raise RetryableStageError(str(exc)) from exc
                restarts = self._take(active)
                if restarts:
                    continue
                work = [r for r in active if self._due(r)]
            if work:
                self._decode(work)
            for r in list(active):
                if r.ended and r.done == r.frames.shape[1]:
                    results[r.index] = self._result(r)
                    active.remove(r)

    def _take(self, active: list[_Row]) -> list[_Row]:
        """Move newly read chunks into the rows; the rows whose stream restarted (reset)."""
        restarted = []
        for r in active:
            e = r.edge
            if e is None:
                continue
            if e.restarted:
                restarted.append(r)
                r.reset(self.groups)
            new = [torch.as_tensor(c).long() for c in e.chunks[r.taken:] if c is not None]
            if new:
                r.frames = torch.cat([r.frames, *new], dim=1)
            r.taken, r.ended = len(e.chunks), e.ended
        return restarted

    def _restart(self, rows: list[_Row]) -> None:
        if rows and self.events is not None:
            self.events.publish(RESTART, [(r.req, {"attempt": r.edge.attempt if r.edge else 0}) for r in rows])
        for r in rows:
            if r.edge is not None:
                r.edge.restarted = False

    def _due(self, r: _Row) -> bool:
        pending = r.frames.shape[1] - r.done
        if pending <= 0:
            return False
        return r.ended or pending >= (self.first if r.done == 0 else self.chunk)

    def _decode(self, work: list[_Row]) -> None:
        windows, ends = [], []
        for r in work:
            size = self.first if r.done == 0 else self.chunk
            pending = r.frames.shape[1] - r.done
            # Whole chunks while the stream runs (so chunk edges match the spec); the rest at the end.
            take = pending if r.ended else pending - pending % size
            end = r.done + min(take, MAX_WINDOW)
            start, skip, keep = self.window(r.done, end)
            windows.append((r.frames[:, start:end], skip, keep))
            ends.append(end)
        pieces = self.decode(windows)
        self.rounds.append(len(windows))
        events = []
        for r, end, piece in zip(work, ends, pieces, strict=True):
            data = pcm16(piece)
            events.append((r.req, {"offset": r.samples, "samples": len(data) // 2, "rate": self.rate,
                                   "format": "pcm_s16le", "attempt": r.edge.attempt if r.edge else 0,
                                   "audio": base64.b64encode(data).decode(), "final": r.ended and end == r.frames.shape[1]}))
            r.pcm.append(data)
            r.samples += len(data) // 2
            r.done = end
        if self.events is not None:
            self.events.publish(AUDIO, events)

    def _result(self, r: _Row) -> RowResult:
        if r.frames.shape[1] == 0:
            return FatalStageError("the talker produced no speech codes")
        return {"audio": wav_of(b"".join(r.pcm), self.rate),
                "usage": {"samples": r.samples, "seconds": r.samples / self.rate, "chunks": len(r.pcm),
                          # Rows per decoder call over this batch: how well chunks of many jobs batched.
                          "decode_calls": len(self.rounds), "decode_rows_max": max(self.rounds, default=0),
                          "decode_rows_mean": round(sum(self.rounds) / max(len(self.rounds), 1), 3)}}
