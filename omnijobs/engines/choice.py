"""Which engine hosts a stage in this worker: the pipeline's kind, or vLLM for the kinds it serves.

Shipped pipelines name the transformers kinds; a worker whose environment has vLLM runs those
stages on vLLM instead (setting `ar_engine`: auto = vLLM where installed, or force either one),
so one pipeline file serves both kinds of deployment. The kind chosen is what the worker
registers, so /admin/api/workers shows it.
"""

from __future__ import annotations

import importlib.util

from omnijobs.pipelines.spec import StageSpec

# transformers kind -> the vLLM kind that serves the same ports.
VLLM_SERVES = {"transformers_lm": "vllm", "qwen2_5_vl": "vllm",
               "qwen2_5_omni_thinker": "vllm_omni_thinker", "qwen3_omni_thinker": "vllm_omni_thinker"}


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose_engine(stage: StageSpec, preference: str = "auto") -> StageSpec:
    """The stage as this worker will host it. A stage may pin its kind with option `engine_choice: fixed`."""
    target = VLLM_SERVES.get(stage.engine)
    if target is None or preference == "transformers" or stage.options.get("engine_choice") == "fixed":
        return stage
    if preference == "vllm" or (preference == "auto" and vllm_installed()):
        return stage.model_copy(update={"engine": target})
    return stage
