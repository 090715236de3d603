"""vLLM's engine for one stage: environment, engine arguments from the stage, start and stop."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omnijobs.errors import EngineDead, MissingExtra
from omnijobs.pipelines.spec import StageSpec

# NOTE: defaults for vLLM's own variables, set only where the operator left them unset, and read by
# vLLM when it is imported. One process: the CPU engine started 2-3x faster and used ~40% less
# memory than with its engine core in a subprocess, and a killed worker leaves nothing behind.
# A GPU deployment that wants the core's own process sets VLLM_ENABLE_V1_MULTIPROCESSING=1.
ENV_DEFAULTS = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    # GiB of KV cache on a CPU worker (vLLM's default takes a large share of the machine's memory).
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "VLLM_CONFIGURE_LOGGING": "0",
}


def import_vllm():
    """The vllm module, with its environment defaults applied; MissingExtra when it is absent."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("VLLM_CACHE_ROOT", str(Path("~/.cache/omnijobs/vllm").expanduser()))
    try:
        import vllm
    except ModuleNotFoundError as exc:
        raise MissingExtra("vllm", "vllm") from exc
    return vllm


def engine_arguments(stage: StageSpec, model_path: Path, device: str) -> dict[str, Any]:
    """vLLM EngineArgs fields for this stage: its YAML `engine_args`, and what the model folder implies."""
    given = stage.engine_args.model_dump(exclude_none=True)
    args: dict[str, Any] = {
        "model": str(model_path),
        "tokenizer": str(model_path),
        "max_num_seqs": max(stage.batch.max_size, 1),
        # Prompts repeat their system turn; sharing its KV blocks is free.
        "enable_prefix_caching": True,
        "seed": 0,
    }
    if device == "cpu":
        # No CUDA graphs on a CPU; float32 like the transformers engine, so both give the same logprobs.
        args.update(enforce_eager=True, dtype="float32")
    args.update(given)
    if "limit_mm_per_prompt" in args:
        args["limit_mm_per_prompt"] = dict(args["limit_mm_per_prompt"])
    return args


def vllm_model_folder(model_path: Path) -> Path:
    """The folder vLLM loads: the stage folder, or a folder of links to it with one processor config.

    vLLM reads preprocessor_config.json at the top of a checkpoint, as released checkpoints keep it
    (image processor and audio feature extractor share that one file). The tiny builds keep each in
    its own subfolder; for those, the two are merged into one file beside links to everything else.
    """
    parts = [model_path / sub / "preprocessor_config.json" for sub in ("image_processor", "feature_extractor")]
    parts = [p for p in parts if p.is_file()]
    if (model_path / "preprocessor_config.json").exists() or not parts:
        return model_path
    merged: dict[str, Any] = {}
    for part in reversed(parts):  # the image processor's keys win where both have one
        merged.update(json.loads(part.read_text()))
    digest = hashlib.sha256(str(model_path.resolve()).encode() + json.dumps(merged, sort_keys=True).encode())
    view = Path(os.environ["VLLM_CACHE_ROOT"]) / "model-views" / digest.hexdigest()[:16]
    view.mkdir(parents=True, exist_ok=True)
    for entry in model_path.iterdir():
        link = view / entry.name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(entry.resolve())
    (view / "preprocessor_config.json").write_text(json.dumps(merged, indent=1))
    return view


def start_engine(stage: StageSpec, model_path: Path, device: str, overrides: dict[str, Any] | None = None):
    """A started vllm LLMEngine for the stage (loads the weights; 20-60 s on a CPU).

    `overrides` are EngineArgs fields over the stage's (a second engine's own settings).
    """
    import_vllm()
    from vllm import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    if not (model_path / "config.json").is_file():
        raise EngineDead(f"model folder not found: {model_path} (build tiny models with `omnijobs models build-tiny`"
                         " or fetch a checkpoint with `omnijobs models pull`)")
    folder = vllm_model_folder(model_path)
    try:
        return LLMEngine.from_engine_args(EngineArgs(**{**engine_arguments(stage, folder, device), **(overrides or {})}))
    except (ValueError, RuntimeError, OSError) as exc:
        raise EngineDead(f"vLLM could not start on {model_path}: {type(exc).__name__}: {exc}") from exc


def stop_engine(engine) -> None:
    """Shut the engine core down now: left to the interpreter's exit, its threads can hang the process."""
    core = getattr(engine, "engine_core", None)
    if core is not None:
        core.shutdown()
