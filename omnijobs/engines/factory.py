"""Pick the engine class for a stage and import its heavy packages only then."""

from __future__ import annotations

import importlib
from pathlib import Path

from omnijobs.engines.base import Engine, EngineContext
from omnijobs.engines.kinds import engine_kind
from omnijobs.errors import MissingExtra
from omnijobs.pipelines.spec import StageSpec


def resolve_model_path(model: str, models_dir: Path) -> Path:
    """A stage's `model` is an absolute path, or a path under the models folder."""
    path = Path(model).expanduser()
    return path if path.is_absolute() else Path(models_dir) / path


def create_engine(stage: StageSpec, device: str, models_dir: Path, **ctx_kwargs) -> Engine:
    kind = engine_kind(stage.engine)
    module_name, _, class_name = kind.impl.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if kind.extra and exc.name and not exc.name.startswith("omnijobs"):
            raise MissingExtra(exc.name, kind.extra) from exc
        raise
    cls = getattr(module, class_name)
    ctx = EngineContext(stage=stage, device=device, model_path=resolve_model_path(stage.model, models_dir),
                        **ctx_kwargs)
    return cls(ctx)
