"""The omni thinkers (Qwen2.5-Omni, Qwen3-Omni) on vLLM, with the hidden states their talkers read.

A row runs in two engines. The sampling engine is the `vllm` kind's: per-row SamplingParams,
continuous add/step/abort, text deltas as they come. When its reply ends, a row that goes on to
speech is prefilled once more, prompt + reply, by a second engine that extracts the states of the
layers the talker reads (states.py); the row ends when they are read, with the same `hidden`
bundle as the transformers thinkers'. Rows asking for text only end with the sampling engine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from omnijobs.engines.base import RowResult, StageRequest
from omnijobs.engines.hidden_stream import PORT, send_handoff
from omnijobs.engines.hub import not_found
from omnijobs.engines.vllm.children import watch_children
from omnijobs.engines.vllm.engine import VLLMEngine, _Live, _stop_ids
from omnijobs.engines.vllm.handoff import ThinkerWeights, bundle, state_layers
from omnijobs.engines.vllm.omni_folder import family_of, thinker_folder
from omnijobs.engines.vllm.omni_prompts import OmniPrompt, OmniPrompts
from omnijobs.engines.vllm.runtime import ENV_DEFAULTS, import_vllm, start_engine
from omnijobs.errors import EngineDead, FatalStageError


@dataclass
class _Handoff:
    """A row whose reply is sampled, waiting for its states."""

    req: StageRequest
    result: dict[str, Any]
    prompt: OmniPrompt
    n_reply: int


class VLLMOmniThinkerEngine(VLLMEngine):
    def load(self) -> None:
        path = self.ctx.model_path
        if not (path / "config.json").is_file():
            raise not_found(self.ctx.stage.model or str(path), path)
        import_vllm()
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", ENV_DEFAULTS["VLLM_ENABLE_V1_MULTIPROCESSING"]) != "0":
            watch_children()
        family = family_of(path)
        stage = self.ctx.stage
        handoff_file = path / "handoff.json"
        special = json.loads(handoff_file.read_text())["embed_tokens"] if handoff_file.exists() else {}
        self.handoff = bool(stage.options.get("handoff", True))
        if self.handoff and not special:
            raise EngineDead(f"{path} has no handoff.json: the next stage needs the thinker's special embeddings")
        states_args = _states_engine_args(stage)
        folder = thinker_folder(path)
        self.llm = start_engine(stage, folder, self.ctx.device)
        self.tokenizer = self.llm.get_tokenizer()
        self.prompts = OmniPrompts(family, self.tokenizer, path, stage.options)
        # As the transformers thinkers: the end of the assistant turn ends a reply too.
        self.stop_ids = sorted(_stop_ids(self.llm, self.tokenizer) | {self.prompts.im_end})
        self.max_len = int(self.llm.model_config.max_model_len)
        self.max_seqs = int(self.llm.vllm_config.scheduler_config.max_num_seqs)
        self.live: dict[str, _Live] = {}
        self.sampled: dict[str, tuple[_Live, str | None]] = {}
        self.handing: dict[str, _Handoff] = {}
        self.states = None
        if not self.handoff:
            return
        text_config = self.llm.model_config.hf_text_config
        self.num_layers = int(text_config.num_hidden_layers)
        self.layer, self.layers = state_layers(int(stage.options.get("hidden_layer", -1)), self.num_layers)
        self.weights = ThinkerWeights.read(folder, text_config.rms_norm_eps, special)
        architecture = None
        if family == "qwen2_5_omni":
            from omnijobs.engines.vllm import omni_models

            architecture = omni_models.register()
        from omnijobs.engines.vllm.states import StateExtractor

        self.states = StateExtractor(stage, folder, self.ctx.device, self.layers, architecture, states_args)

    @property
    def free_slots(self) -> int:
        return max(self.max_seqs - len(self.live) - len(self.handing), 0)

    def add(self, req: StageRequest) -> RowResult | None:
        if req.run_id in self.handing:
            return None
        return super().add(req)

    def step(self) -> list[tuple[StageRequest, RowResult]]:
        done = []
        for req, result in super().step():
            sampled, finish_reason = self.sampled.pop(req.run_id, (None, None))
            if isinstance(result, BaseException) or sampled is None or not self._speaks(req):
                done.append((req, result))
                continue
            tokens = result["token_ids"]
            # A reply token has states once the model consumed it: all of them when a stop token
            # followed, all but the last when the row was cut (as on transformers).
            stopped = finish_reason == "stop" and len(sampled.token_ids) > len(tokens)
            n_reply = len(tokens) if stopped else max(0, len(tokens) - 1)
            try:
                self.states.add(req.run_id, sampled.prompt.for_vllm(tokens[:n_reply]))
            except (ValueError, TypeError) as exc:
                done.append((req, FatalStageError(f"vLLM refused the state prefill: {exc}")))
                continue
            self.handing[req.run_id] = _Handoff(req, result, sampled.prompt, n_reply)
        if self.states is not None:
            for run_id, states in self.states.step():
                waiting = self.handing.pop(run_id, None)
                if waiting is not None:
                    waiting.result["hidden"] = bundle(states, waiting.n_reply, waiting.prompt, self.layer,
                                                      self.layers, self.num_layers, self.prompts.media_ids,
                                                      self.weights)
                    if self.ctx.chunks is not None and PORT in self.ctx.chunks.outgoing:
                        # The talker reads a stream: the states come only now, all in one piece.
                        send_handoff(self.ctx.chunks, waiting.req, waiting.result["hidden"])
                    done.append((waiting.req, waiting.result))
        return done

    def abort(self, run_ids) -> list[tuple[StageRequest, RowResult]]:
        ids = list(run_ids)
        ended = super().abort(ids)
        for req, _ in ended:
            self.sampled.pop(req.run_id, None)
        handing = [r for r in ids if r in self.handing]
        if handing:
            self.states.abort(handing)
            ended += [(h.req, h.result) for h in (self.handing.pop(r) for r in handing)]
        return ended

    def _in_flight(self) -> list[str]:
        return [*self.live, *self.handing]

    def close(self) -> None:
        super().close()
        if self.states is not None:
            self.states.close()
            self.states = None
        self.handing.clear()

    def _result(self, live: _Live, finish_reason: str | None) -> RowResult:
        self.sampled[live.req.run_id] = (live, finish_reason)
        return super()._result(live, finish_reason)

    def _speaks(self, req: StageRequest) -> bool:
        """Whether the row goes on to the talker: handoff on, and the job asked for audio."""
        modalities = req.inputs.get("modalities")
        return self.states is not None and (not isinstance(modalities, list) or "audio" in modalities)


def _states_engine_args(stage) -> dict[str, Any]:
    """The extraction engine's own `engine_args` (stage option `states_engine_args`) over the stage's.

    NOTE: on a GPU both engines take their share of its memory, and vLLM's default share is most
    of it: give each one its `gpu_memory_utilization` (e.g. 0.5 in engine_args, 0.3 here).
    """
    from pydantic import ValidationError

    from omnijobs.pipelines.spec import EngineArgs

    try:
        return EngineArgs(**(stage.options.get("states_engine_args") or {})).model_dump(exclude_none=True)
    except (ValidationError, TypeError) as exc:
        raise EngineDead(f"stage option states_engine_args: {exc}") from exc
