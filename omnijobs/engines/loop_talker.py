"""A talker stage engine around its decode loop (engines/talker_loop.py), for both omni families.

Rows join and leave between steps (add / step / abort): the worker runs it in its continuous loop,
so a job that arrives while others are speaking starts at the next step, and its first codes (and
first audio, where the decoder streams them) come without waiting for the others to end. Where the
decoder reads `codes` as a stream, each row's frames go out as they are made: `first_chunk` frames,
then `chunk`, the rest with the end mark. Where the talker reads `hidden` as a stream, a row starts
once the thinker's first reply token is out and takes the rest as it comes (engines/talker_feeds.py).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch

from omnijobs.engines.base import Engine, RowResult, StageRequest
from omnijobs.engines.omni_glue import TalkerRow, handoff_bundle
from omnijobs.engines.talker_feeds import TalkerFeeds
from omnijobs.engines.talker_loop import LoopRow, TalkerLoop
from omnijobs.errors import FatalStageError
from omnijobs.streaming.chunks import whole_chunks


class LoopTalkerEngine(Engine):
    """The family subclass loads its model, builds `self.loop` in `load` and then calls `_start`."""

    loop: TalkerLoop

    def _start(self) -> None:
        self.max_seqs = self.ctx.stage.batch.max_size
        self.stream = self.ctx.chunks.outgoing.get("codes") if self.ctx.chunks is not None else None
        self._joining: list[tuple[StageRequest, TalkerRow, dict]] = []
        self._sent: dict[str, int] = {}  # frames of each streamed row already sent
        self.feeds = TalkerFeeds(self.ctx, self.loop, self._talker_row, self._text_states,
                                 on_restart=self._restart_codes)
        if self.stream is not None:
            self.loop.on_frames = lambda: self._emit([])

    # ------------------------------------------------------------------ the family's parts

    @abstractmethod
    def _prepare(self, req: StageRequest) -> tuple[dict[str, Any], Any]:
        """The row's sampling state and speaker; FatalStageError for a bad request."""

    @abstractmethod
    def _talker_row(self, bundle: dict[str, torch.Tensor], speaker: Any, complete: bool = True) -> TalkerRow:
        """The row's talker inputs from the thinker's hand-off (`complete=False`: its reply is still coming)."""

    @abstractmethod
    def _text_states(self, replies: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """The text states (n, D) of more reply tokens that came on the stream, all rows' at once."""

    def _outputs(self, req: StageRequest, codes: torch.Tensor) -> dict[str, Any]:
        """The row's result from its codes (G, T)."""
        return {"codes": {"codes": codes}, "usage": {"codes": int(codes.shape[1])}}

    # ------------------------------------------------------------------ request by request

    def add(self, req: StageRequest) -> RowResult | None:
        try:
            sampling, speaker = self._prepare(req)
            if self.feeds.streamed(req):
                return self.feeds.open(req, sampling, speaker)
            with torch.no_grad():
                row = self._talker_row(handoff_bundle(req), speaker)
            self._joining.append((req, row, sampling))
        except FatalStageError as exc:
            return exc
        return None

    def step(self) -> list[tuple[StageRequest, RowResult]]:
        ended, failed = [], []
        with torch.no_grad():
            if self.feeds.feeds:
                can_step = bool(self._joining) or any(not r.starving() for r in self.loop.rows)
                fed, failed = self.feeds.follow(can_step)
                self._joining += fed
            if self._joining:
                reqs, rows, samplings = zip(*self._joining, strict=True)
                self._joining = []
                ended += self.loop.join(list(reqs), list(rows), list(samplings))
                self.feeds.joined()
            # Streamed rows whose next text state has not come are parked first (or, if all wait, nobody steps).
            can_step = self.feeds.balance() if self.feeds.feeds else bool(self.loop.rows)
            if can_step:
                ended += self.loop.step()
        self._emit(ended)
        for req, _ in failed:
            self._sent.pop(req.run_id, None)
        self.feeds.drop({r.req.run_id for r in ended})
        return [(r.req, self._result(r)) for r in ended] + failed

    def abort(self, run_ids) -> list[tuple[StageRequest, RowResult]]:
        run_ids = set(run_ids)
        gone = [req for req, _, _ in self._joining if req.run_id in run_ids]
        self._joining = [j for j in self._joining if j[0].run_id not in run_ids]
        gone += [r.req for r in self.loop.abort(run_ids)]
        gone += self.feeds.drop(run_ids)  # those waiting outside the batch
        for req in gone:
            self._sent.pop(req.run_id, None)
        return [(req, FatalStageError("canceled")) for req in gone]

    # ------------------------------------------------------------------ a whole batch

    def run(self, batch: list[StageRequest]) -> list[RowResult]:
        results: dict[str, RowResult] = {}
        for req in batch:
            error = self.add(req)
            if error is not None:
                results[req.run_id] = error
        try:
            while self._joining or self.loop.rows or self.feeds.feeds:
                stop = [run_id for run_id in self._in_flight() if self.ctx.should_stop(run_id)]
                results.update((req.run_id, result) for req, result in self.abort(stop))
                results.update((req.run_id, result) for req, result in self.step())
        finally:
            self.abort(self._in_flight())
        return [results[req.run_id] for req in batch]

    def _in_flight(self) -> list[str]:
        return list({*(r.req.run_id for r in self.loop.rows), *(req.run_id for req, _, _ in self._joining),
                     *self.feeds.feeds})

    def _restart_codes(self, req: StageRequest) -> None:
        """The row starts over: its next codes open a new attempt of its stream."""
        self._sent.pop(req.run_id, None)
        if self.stream is not None:
            self.ctx.chunks.restart(req, "codes")

    # ------------------------------------------------------------------ inside

    def _result(self, r: LoopRow) -> RowResult:
        codes = torch.stack(r.frames, dim=1).long() if r.frames else torch.zeros((self.loop.groups, 0), dtype=torch.long)
        return self._outputs(r.req, codes)

    def _emit(self, ended: list[LoopRow]) -> None:
        """Send the whole chunks the rows gained; an ended row's rest goes with the end mark."""
        if self.stream is None:
            return
        out = []
        for r in [*self.loop.rows, *ended]:
            sent = self._sent.get(r.req.run_id, 0)
            for start, sent in whole_chunks(sent, len(r.frames), self.stream):
                out.append((r.req, "codes", torch.stack(r.frames[start:sent], dim=1), False))
            if r.ended:
                rest = torch.stack(r.frames[sent:], dim=1) if len(r.frames) > sent else None
                out.append((r.req, "codes", rest, True))
                self._sent.pop(r.req.run_id, None)
            else:
                self._sent[r.req.run_id] = sent
        if out:
            self.ctx.chunks.emit_many(out)
