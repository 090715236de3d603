"""Talker rows whose thinker states come as a stream (engines/hidden_stream.py writes it).

A row joins the talker's batch once its stream holds the prompt part and the first reply state
(or the end mark: an empty reply), so the talker speaks while the thinker still writes. Reply
states that come later are projected and fed to the row; the end mark ends its text. A row whose
next text state has not come is parked, so the rest of the batch goes on; it goes back in once
fed. If every row in the batch is waiting, nothing is parked: the next read waits for the thinker.

When the thinker's attempt dies and a new one writes the stream again, the row starts over from
the new attempt's first chunk, and its own `codes` stream restarts too (its readers drop what they
decoded and its listeners are told), so no audio of two attempts is ever joined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from omnijobs.engines.base import StageRequest
from omnijobs.engines.hidden_stream import joined_handoff
from omnijobs.engines.omni_glue import TalkerRow
from omnijobs.engines.talker_loop import LoopRow, Parked, TalkerLoop
from omnijobs.errors import FatalStageError, RetryableStageError
from omnijobs.streaming.chunks import EdgeStream

# Read wait while no row can step: a new chunk ends it at once; the bound is how long a job that
# arrives meanwhile waits to be admitted (the continuous loop admits between steps).
WAIT_MS = 20


@dataclass
class _Feed:
    req: StageRequest
    edge: EdgeStream
    sampling: dict[str, Any]
    speaker: Any
    taken: int = 0  # chunks of the edge in the row so far (0: not built yet)
    row: LoopRow | None = None  # once it joined the batch
    eos: torch.Tensor | None = None  # what ends its text
    parked: Parked | None = None


class TalkerFeeds:
    """The streamed rows of one talker engine, around its TalkerLoop.

    `row_of(bundle, speaker, complete)` builds a row's talker inputs from the hand-off so far;
    `text_of(reply_chunks)` gives the text states of reply chunks that came later (all rows' in one call).
    """

    def __init__(self, ctx, loop: TalkerLoop, row_of, text_of, port: str = "hidden", on_restart=None):
        self.ctx, self.loop, self.port = ctx, loop, port
        self.row_of, self.text_of = row_of, text_of
        self.feeds: dict[str, _Feed] = {}
        # Called with the request whose own output starts over (the engine restarts its codes stream).
        self.on_restart = on_restart or (lambda req: None)

    def streamed(self, req: StageRequest) -> bool:
        """Whether the row's states come from the stream (no recorded input: the thinker still runs)."""
        return req.inputs.get(self.port) is None and self.port in self.ctx.stage.streams

    def open(self, req: StageRequest, sampling: dict[str, Any], speaker: int) -> FatalStageError | None:
        if self.ctx.chunks is None:
            return FatalStageError(
                f"input '{self.port}' is streamed from {self.ctx.stage.inputs[self.port]}, which needs a Redis "
                "broker (the stream's transport); without one, drop `streams:` from the pipeline")
        edge = self.ctx.chunks.open(req.job_id, self.ctx.stage.inputs[self.port])
        edge.restarted = False  # a retry of this stage: its own codes stream restarts on its own
        self.feeds[req.run_id] = _Feed(req, edge, sampling, speaker)
        return None

    # ------------------------------------------------------------------ each step

    def follow(self, can_step: bool) -> tuple[list[tuple[StageRequest, TalkerRow, dict]], list[tuple[StageRequest, Any]]]:
        """Read the streams (waiting only if nothing can step); returns the rows ready to join and
        the rows that failed (their stream lost chunks, or ended empty)."""
        reading = [f.edge for f in self.feeds.values() if not f.edge.ended and not f.edge.lost]
        if reading:
            self.ctx.chunks.read(reading, 0 if can_step else WAIT_MS)
        joining, failed, fed = [], [], []
        for f in list(self.feeds.values()):
            edge = f.edge
            if edge.lost:
                if f.row is not None and f.parked is None:
                    self.loop.abort({f.req.run_id})  # out of the batch: its run fails (and is retried)
                failed.append((f.req, RetryableStageError(edge.lost)))
                continue
            if edge.restarted:
                edge.restarted = False
                self._start_over(f)
            if f.row is None and f.taken == 0:
                if edge.ended and (not edge.chunks or edge.chunks[0] is None):
                    failed.append((f.req, FatalStageError("the thinker's stream ended without its states")))
                elif edge.chunks and (len(edge.chunks) >= 2 or edge.ended):
                    try:
                        joining.append(self._build(f))
                    except FatalStageError as exc:  # e.g. a hand-off without the row's speaker
                        failed.append((f.req, exc))
            elif f.row is not None and len(edge.chunks) > f.taken:
                fed.append(f)
        self._feed(fed)
        for req, _ in failed:
            self.drop({req.run_id})
        return joining, failed

    def joined(self) -> None:
        """Link the rows that just joined the batch to their feeds."""
        for r in self.loop.rows:
            f = self.feeds.get(r.req.run_id)
            if f is not None and f.row is None:
                f.row = r
                r.text_done = f.edge.ended

    def balance(self) -> bool:
        """Unpark the rows that were fed, park those that wait while others can step; whether the
        batch can step now (no row in it waits)."""
        ready = [f for f in self.feeds.values() if f.parked is not None and not f.row.starving()]
        if ready:
            self.loop.unpark([f.parked for f in ready])
            for f in ready:
                f.parked = None
        starving = {r.req.run_id for r in self.loop.rows if r.starving()}
        if starving and len(starving) < len(self.loop.rows):
            for p in self.loop.park(starving):
                self.feeds[p.row.req.run_id].parked = p
            starving = set()
        return bool(self.loop.rows) and not starving

    def waiting(self) -> bool:
        """Whether rows wait outside the batch (not yet joined, or parked)."""
        return any(f.row is None or f.parked is not None for f in self.feeds.values())

    def drop(self, run_ids: set[str]) -> list[StageRequest]:
        """Forget these rows (ended, canceled, failed); those not in the batch are returned."""
        out = []
        for run_id in run_ids:
            f = self.feeds.pop(run_id, None)
            if f is None:
                continue
            self.ctx.chunks.done([f.edge])
            if f.row is None or f.parked is not None:
                out.append(f.req)
        return out

    # ------------------------------------------------------------------ inside

    def _build(self, f: _Feed) -> tuple[StageRequest, TalkerRow, dict]:
        with torch.no_grad():
            row = self.row_of(joined_handoff(f.edge.chunks), f.speaker, complete=f.edge.ended)
        f.taken, f.eos = len(f.edge.chunks), row.eos
        return f.req, row, f.sampling

    def _feed(self, feeds: list[_Feed]) -> None:
        """Give these rows the reply states their streams gained (all rows' in one projection)."""
        new = [[c for c in f.edge.chunks[f.taken:] if c is not None] for f in feeds]
        sizes = [sum(c["reply_ids"].shape[0] for c in chunks) for chunks in new]
        flat = [c for chunks in new for c in chunks]
        with torch.no_grad():
            states = self.text_of(flat).split(sizes) if flat else [None] * len(feeds)
        for f, size, part in zip(feeds, sizes, states, strict=True):
            f.taken = len(f.edge.chunks)
            part = part if size else None
            if f.edge.ended:
                part = f.eos.unsqueeze(0) if part is None else torch.cat([part, f.eos.unsqueeze(0)])
            self.loop.feed(f.row, part, f.edge.ended)

    def _start_over(self, f: _Feed) -> None:
        """The stream restarted (a new attempt of the thinker): drop the row built from the old one."""
        if f.row is not None and f.parked is None:
            self.loop.abort({f.req.run_id})
        f.row, f.parked, f.taken, f.eos = None, None, 0, None
        self.on_restart(f.req)
