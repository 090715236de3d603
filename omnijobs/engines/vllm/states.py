"""Per-token hidden states from vLLM: a second engine that only prefills, with state extraction on.

vLLM extracts the states of chosen layers through its `extract_hidden_states` speculative method
and a connector that writes them to a file per request. Only greedy decoding stays faithful on
such an engine (its sampler runs the speculative path), so replies are sampled by a plain engine
and this one prefills prompt + reply with max_tokens=1: the file then holds every position's
states. Layer k is the input of decoder layer k (0 = the input embeddings, with the media
features in place), as transformers' hidden_states[k]; the last layer's comes before the final
norm. A file is read and deleted at once; the folder goes when the engine closes.

NOTE: vLLM keeps a worker's connector in one module global, which every engine of the process
consults: the sampling engine, seeing the extractor's, fails its first step. With both engines in
one process (the default), the extractor's connector is held here and put in place only while
the extractor steps or stops; engine cores in their own processes have each their own. Like
vLLM's other process globals, this assumes one thread steps the worker's vLLM engines.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from omnijobs.engines.vllm.runtime import start_engine
from omnijobs.errors import EngineDead
from omnijobs.pipelines.spec import StageSpec

@dataclass
class States:
    token_ids: list[int]
    # (tokens, layers, hidden): the layers in the order the extractor was given them.
    hidden: torch.Tensor


class StateExtractor:
    def __init__(self, stage: StageSpec, folder: Path, device: str, layers: list[int],
                 architecture: str | None = None, engine_args: dict[str, Any] | None = None):
        self.layers = list(layers)
        self.dir = Path(tempfile.mkdtemp(prefix="omnijobs-states-"))
        overrides: dict[str, Any] = {
            **(engine_args or {}),
            # NOTE: a cached prefix is not computed again; that its states stay with its blocks is
            # not something to rely on, so every request is prefilled whole.
            "enable_prefix_caching": False,
            "speculative_config": {
                "method": "extract_hidden_states", "num_speculative_tokens": 1,
                "draft_model_config": {"hf_config": {"eagle_aux_hidden_state_layer_ids": self.layers}},
            },
            "kv_transfer_config": {
                "kv_connector": "StatesFileConnector",
                "kv_connector_module_path": "omnijobs.engines.vllm.states_connector",
                "kv_role": "kv_producer",
                "kv_connector_extra_config": {"shared_storage_path": str(self.dir),
                                              "use_synchronization_lock": False},
            },
        }
        if architecture:
            overrides["hf_overrides"] = {"architectures": [architecture]}
        from vllm.distributed.kv_transfer import kv_transfer_state
        from vllm.v1.engine.core_client import InprocClient

        self.llm = start_engine(stage, folder, device, overrides)
        self.connector, kv_transfer_state._KV_CONNECTOR_AGENT = kv_transfer_state._KV_CONNECTOR_AGENT, None
        # An engine core in this process writes a finished request's file only when stepped; one in
        # its own process steps by itself (and a step with nothing to report would wait forever).
        self.in_process = isinstance(self.llm.engine_core, InprocClient)
        self.running: set[str] = set()
        self.paths: dict[str, Path] = {}
        self.orphans: set[Path] = set()

    def add(self, run_id: str, prompt: dict[str, Any]) -> None:
        from vllm import SamplingParams

        self.llm.add_request(run_id, prompt, SamplingParams(max_tokens=1, temperature=0.0))
        self.running.add(run_id)

    def step(self) -> list[tuple[str, States]]:
        """One engine step; the requests whose states are ready, read (and their files deleted)."""
        outputs = []
        if self.running or (self.in_process and (self.paths or self.orphans)):
            try:
                with self._own_connector():
                    outputs = self.llm.step()
            except Exception as exc:
                raise EngineDead(f"vLLM state extraction failed: {type(exc).__name__}: {exc}") from exc
        for out in outputs:
            if out.finished and out.request_id in self.running:
                self.running.discard(out.request_id)
                path = (out.kv_transfer_params or {}).get("hidden_states_path")
                if path is None:
                    raise EngineDead(f"vLLM returned no states for {out.request_id}")
                self.paths[out.request_id] = Path(path)
        ready = []
        # The connector writes a finished request's file in a later step than the one that ends it.
        for run_id, path in list(self.paths.items()):
            if path.exists():
                del self.paths[run_id]
                ready.append((run_id, _read(path)))
        for path in [p for p in self.orphans if p.exists()]:
            path.unlink()
            self.orphans.discard(path)
        return ready

    def abort(self, run_ids) -> None:
        ids = [r for r in run_ids if r in self.running or r in self.paths]
        running = [r for r in ids if r in self.running]
        if running:
            self.llm.abort_request(running)
        for run_id in ids:
            self.running.discard(run_id)
            path = self.paths.pop(run_id, None)
            if path is not None:  # it ended, its file is on the way: deleted when it comes
                self.orphans.add(path)

    @contextmanager
    def _own_connector(self):
        from vllm.distributed.kv_transfer import kv_transfer_state

        saved, kv_transfer_state._KV_CONNECTOR_AGENT = kv_transfer_state._KV_CONNECTOR_AGENT, self.connector
        try:
            yield
        finally:
            kv_transfer_state._KV_CONNECTOR_AGENT = saved

    def close(self) -> None:
        from omnijobs.engines.vllm.runtime import stop_engine

        if self.llm is not None:
            if self.running:
                self.llm.abort_request(list(self.running))
            with self._own_connector():
                stop_engine(self.llm)
            self.llm = None
        shutil.rmtree(self.dir, ignore_errors=True)


def _read(path: Path) -> States:
    from safetensors.torch import load_file

    try:
        data = load_file(path, device="cpu")
    finally:
        path.unlink(missing_ok=True)
    return States(data["token_ids"].tolist(), data["hidden_states"])
