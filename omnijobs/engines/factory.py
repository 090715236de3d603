"""Pick the engine class for a stage and import its heavy packages only then."""

from __future__ import annotations

import importlib
from pathlib import Path

from omnijobs.engines import hub
from omnijobs.engines.base import Engine, EngineContext
from omnijobs.engines.kinds import engine_kind
from omnijobs.errors import MissingExtra
from omnijobs.pipelines.spec import StageSpec


def resolve_model_path(model: str, models_dir: Path) -> Path:
    """A stage's `model` is an absolute path, a path under the models folder, or a hub id in the hub cache.

    A model found nowhere resolves to its (missing) folder under the models dir.
    """
    path = Path(model).expanduser()
    if path.is_absolute():
        return path
    local = Path(models_dir) / path
    if local.exists() or not hub.is_hub_id(model):
        return local
    return hub.cached_snapshot(model) or local


def require_model_path(model: str, models_dir: Path) -> Path:
    """resolve_model_path, or ModelNotFound naming the id, the folder and the cache that were tried."""
    path = resolve_model_path(model, models_dir)
    if model and not path.exists():
        raise hub.not_found(model, Path(models_dir) / model)
    return path


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
