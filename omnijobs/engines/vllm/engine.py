"""The `vllm` engine kind: AR stages on vLLM's engine, request by request.

`run(batch)` serves the batch worker like every other engine. Continuous batching uses the parts
it is made of: `add` a request when a slot is free, `step` the engine and get the rows that ended,
`abort` the canceled ones. Each row keeps its own SamplingParams (seed, max_tokens, stops), and
vLLM's per-request generators make a row's tokens independent of its neighbours.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from omnijobs.engines.base import Engine, RowResult, StageRequest, _no_deltas
from omnijobs.engines.hub import not_found
from omnijobs.engines.vllm.children import watch_children
from omnijobs.engines.vllm.params import sampling_params
from omnijobs.engines.vllm.prompts import prompt_builder
from omnijobs.engines.vllm.runtime import ENV_DEFAULTS, start_engine, stop_engine
from omnijobs.errors import EngineDead, FatalStageError

log = logging.getLogger(__name__)


@dataclass
class _Live:
    """A request inside vLLM: what it had produced at its last step, and what was streamed of it."""

    req: StageRequest
    prompt_tokens: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    sent_tokens: int = 0
    sent_text: int = 0
    prompt: Any = None  # what was given to vLLM (the omni thinker prefills it again for the states)


class VLLMEngine(Engine):
    def load(self) -> None:
        path = self.ctx.model_path
        if not (path / "config.json").is_file():
            raise not_found(self.ctx.stage.model or str(path), path)
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", ENV_DEFAULTS["VLLM_ENABLE_V1_MULTIPROCESSING"]) != "0":
            watch_children()  # vLLM's engine core runs in a child process: it must die with us
        self.llm = start_engine(self.ctx.stage, path, self.ctx.device)
        self.tokenizer = self.llm.get_tokenizer()
        model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
        self.prompts = prompt_builder(model_type, self.tokenizer, self.ctx.stage.options)
        self.stop_ids = sorted(_stop_ids(self.llm, self.tokenizer))
        self.max_len = int(self.llm.model_config.max_model_len)
        self.max_seqs = int(self.llm.vllm_config.scheduler_config.max_num_seqs)
        self.live: dict[str, _Live] = {}

    # ------------------------------------------------------------------ request by request

    @property
    def free_slots(self) -> int:
        return max(self.max_seqs - len(self.live), 0)

    def add(self, req: StageRequest) -> RowResult | None:
        """Hand one request to vLLM. Returns None once it runs, or the error that fails it alone."""
        if req.run_id in self.live:
            return None
        try:
            prompt = self.prompts.build(req)
            params = sampling_params(req.params, self.stop_ids)
        except (KeyError, ValueError, TypeError) as exc:
            return FatalStageError(f"cannot build the prompt: {exc}")
        except FatalStageError as exc:
            return exc
        if len(prompt.token_ids) + params.max_tokens > self.max_len:
            return FatalStageError(f"prompt of {len(prompt.token_ids)} tokens + max_tokens {params.max_tokens} "
                                   f"exceeds the stage's {self.max_len} positions")
        try:
            self.llm.add_request(req.run_id, prompt.for_vllm(), params)
        except (ValueError, TypeError) as exc:  # vLLM refuses what its processor cannot take (too many images...)
            return FatalStageError(f"vLLM refused the request: {exc}")
        self.live[req.run_id] = _Live(req, len(prompt.token_ids), prompt=prompt)
        return None

    def step(self) -> list[tuple[StageRequest, RowResult]]:
        """One engine step over every live request; the requests that ended, with their results."""
        if not self.live:
            return []
        try:
            outputs = self.llm.step()
        except Exception as exc:
            raise EngineDead(f"vLLM step failed: {type(exc).__name__}: {exc}") from exc
        ended, deltas = [], []
        for out in outputs:
            live = self.live.get(out.request_id)
            if live is None:
                continue
            completion = out.outputs[0]
            live.token_ids, live.text = list(completion.token_ids), completion.text
            live.prompt_tokens = len(out.prompt_token_ids or []) or live.prompt_tokens
            if not out.finished:
                delta = self._delta(live)
                if delta is not None:
                    deltas.append((live.req, delta))
                continue
            del self.live[out.request_id]
            result = self._result(live, completion.finish_reason)
            deltas.append((live.req, self._final_delta(live, result, completion.finish_reason)))
            ended.append((live.req, result))
        self._emit(deltas)
        return ended

    def abort(self, run_ids: Iterable[str]) -> list[tuple[StageRequest, RowResult]]:
        """Stop these requests in vLLM; each keeps what it had produced (vLLM reports nothing for them)."""
        ids = [r for r in run_ids if r in self.live]
        if not ids:
            return []
        self.llm.abort_request(ids)
        ended, deltas = [], []
        for run_id in ids:
            live = self.live.pop(run_id)
            result = self._result(live, "abort")
            deltas.append((live.req, self._final_delta(live, result, "canceled")))
            ended.append((live.req, result))
        self._emit(deltas)
        return ended

    # ------------------------------------------------------------------ batch

    def _in_flight(self) -> list[str]:
        """Run ids this engine still holds (what a cancel may abort)."""
        return list(self.live)

    def run(self, batch: list[StageRequest]) -> list[RowResult]:
        results: dict[str, RowResult] = {}
        for req in batch:
            refused = self.add(req)
            if refused is not None:
                results[req.run_id] = refused
        while any(req.run_id not in results for req in batch):
            canceled = [run_id for run_id in self._in_flight() if self.ctx.should_stop(run_id)]
            for req, result in self.abort(canceled) + self.step():
                results[req.run_id] = result
        return [results[req.run_id] for req in batch]

    def close(self) -> None:
        """Shut vLLM's engine core down (the worker calls this when it stops)."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            if self.live:
                self.llm.abort_request(list(self.live))
                self.live.clear()
            stop_engine(llm)
            self.llm = None

    # ------------------------------------------------------------------ results and deltas

    def _tokens(self, live: _Live, finish_reason: str | None) -> list[int]:
        tokens = live.token_ids
        # A row that ended on an end-of-turn id gets it in token_ids; results leave it out, as on transformers.
        if finish_reason == "stop" and tokens and tokens[-1] in self.stop_ids:
            tokens = tokens[:-1]
        return tokens

    def _result(self, live: _Live, finish_reason: str | None) -> RowResult:
        tokens = self._tokens(live, finish_reason)
        return {
            "text": live.text,
            "token_ids": tokens,
            "usage": {"prompt_tokens": live.prompt_tokens, "completion_tokens": len(tokens)},
        }

    def _delta(self, live: _Live) -> dict | None:
        # A row still running has no stopping id among its tokens (vLLM ends a row in the step that drew one).
        tokens = live.token_ids
        if len(tokens) <= live.sent_tokens and len(live.text) <= live.sent_text:
            return None
        delta = {"text": live.text[live.sent_text:], "token_ids": tokens[live.sent_tokens:]}
        live.sent_tokens, live.sent_text = len(tokens), len(live.text)
        return delta

    def _final_delta(self, live: _Live, result: dict, finish_reason: str | None) -> dict:
        reason = {"length": "length", "canceled": "canceled"}.get(finish_reason or "", "stop")
        return {"text": result["text"][live.sent_text:], "token_ids": result["token_ids"][live.sent_tokens:],
                "done": True, "finish_reason": reason}

    def _emit(self, deltas: list) -> None:
        emit = getattr(self.ctx, "emit_delta", _no_deltas)
        if deltas and emit is not _no_deltas:
            try:
                emit(deltas)
            except Exception:  # streaming is a courtesy; the runs go on and their results are recorded
                log.exception("could not publish token deltas")


def _stop_ids(llm, tokenizer) -> set[int]:
    """End-of-turn ids: the generation config's eos ids, the tokenizer's eos and pad, as on transformers."""
    ids: set[int] = set()
    gen = llm.model_config.try_get_generation_config() or {}
    for source in (gen.get("eos_token_id"), tokenizer.eos_token_id, tokenizer.pad_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids
