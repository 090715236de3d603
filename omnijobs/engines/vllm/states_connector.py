"""vLLM's hidden-state connector without CUDA: the states of a finished request, written to one file.

vLLM's extraction engine keeps each token's states of the chosen layers in a cache of their own;
its example connector copies a finished request's rows out on a CUDA stream and writes them in a
thread, which a CPU engine cannot do. This one copies them in the engine step and writes the file
under a temporary name, renamed when complete, so a reader never needs the connector's lock files
(a lock the engine step would only release later deadlocks an in-process reader). An aborted
request gets no file: nobody waits for it.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import save_file
from vllm.distributed.kv_transfer.kv_connector.v1.example_hidden_states_connector import (
    ExampleHiddenStatesConnector,
    extract_from_kv_cache,
)
from vllm.v1.request import RequestStatus

PARTIAL = ".part"


class _Written:
    """Stands for the CUDA event the base class polls: the copy is done when the step is."""

    def query(self) -> bool:
        return True


class StatesFileConnector(ExampleHiddenStatesConnector):
    def request_finished(self, request, block_ids):
        if request.status not in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH_CAPPED):
            self._request_filenames.pop(request.request_id, None)
            return False, None  # its blocks are freed at once
        return super().request_finished(request, block_ids)

    def _submit_async_write(self, pending) -> None:
        if not self._is_tp_rank_zero:
            return
        blocks = torch.tensor(pending.block_ids, dtype=torch.long)
        offsets = torch.arange(self._block_size, dtype=torch.long)
        slots = (offsets[None, :] + blocks[:, None] * self._block_size).flatten().to(self._kv_cache.device)
        states = extract_from_kv_cache(self._kv_cache, slots, pending.token_ids.shape[0]).cpu().contiguous()
        os.makedirs(os.path.dirname(pending.filename), exist_ok=True)
        partial = pending.filename + PARTIAL
        save_file({"hidden_states": states, "token_ids": pending.token_ids.clone()}, partial)
        os.replace(partial, pending.filename)
        self._req_copy_events[pending.req_id] = _Written()
