"""Loading a diffusers pipeline folder (model_index.json + one folder per component) for one stage."""

from __future__ import annotations

import json
from pathlib import Path

# Imported here, not lazily: the engine factory turns a missing package into MissingExtra("diffusers").
import diffusers

from omnijobs.engines.torch_runtime import torch_device
from omnijobs.errors import EngineDead

# Components that are Qwen2.5-VL processors: built from their parts (see load_qwen_vl_processor).
_VL_PROCESSORS = ("processor", "text_processor")


def model_index(path: Path) -> dict:
    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise EngineDead(
            f"no diffusers pipeline at {path} (model_index.json missing; build tiny models with "
            "`omnijobs models build-tiny`)"
        )
    return json.loads(index.read_text())


def load_pipeline(path: Path, device: str, skip: tuple[str, ...] = ()):
    """The pipeline class named in model_index.json, without the components this stage does not run."""
    from omnijobs.models.qwen_vl import load_qwen_vl_processor

    index = model_index(path)
    cls = getattr(diffusers, index["_class_name"], None)
    if cls is None:
        raise EngineDead(f"{path}: diffusers {diffusers.__version__} has no {index['_class_name']}")
    overrides = {name: None for name in skip if name in index}
    for name in _VL_PROCESSORS:
        if name in index and name not in skip:
            overrides[name] = load_qwen_vl_processor(Path(path) / name)
    try:
        pipe = cls.from_pretrained(path, **overrides)
    except (OSError, ValueError, KeyError) as exc:
        raise EngineDead(f"cannot load {index['_class_name']} from {path}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch_device(device))


def component_config(path: Path, component: str) -> dict:
    return json.loads((Path(path) / component / "config.json").read_text())
