"""Stage models given as hub ids ("Qwen/Qwen2.5-VL-7B-Instruct"), found in huggingface_hub's cache.

Workers never download: a hub id resolves to a snapshot already in the cache (HF_HUB_CACHE /
HF_HOME, laid out as huggingface_hub lays it out), so a worker starts the same with HF_HUB_OFFLINE=1.
`omnijobs models pull` is the one place that fetches, where a network exists.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from omnijobs.errors import EngineDead

# owner/name as the hub spells them; a relative folder like "tiny/qwen2" has the same shape, so a
# folder under the models dir is always looked for first.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelNotFound(EngineDead):
    """A stage's model is neither a local folder nor a snapshot in the hub cache."""


def is_hub_id(model: str) -> bool:
    return bool(_HUB_ID.match(model)) and ".." not in model


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of a hub model, or None when the cache holds none."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError):
        return None


def not_found(model: str, local: Path) -> ModelNotFound:
    hint = (f" and no snapshot of hub id '{model}' in the hub cache {cache_dir()}; fetch it where a network "
            f"exists with `omnijobs models pull {model}`" if is_hub_id(model) else "")
    return ModelNotFound(f"model '{model}' not found: no folder {local}{hint} "
                         "(tiny models: `omnijobs models build-tiny`)")


def pull(repo_id: str, revision: str | None = None) -> Path:
    """Download a hub model into the cache (or find it there); its snapshot folder."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, revision=revision))


def pull_target(target: str, settings, revision: str | None = None) -> list[tuple[str, Path]]:
    """`omnijobs models pull`: the hub models of a pipeline (one not already a local folder), or one id.

    Pipelines are looked up among the loaded ones and the real-checkpoint ones shipped in
    pipelines/builtin/real. Returns (model, snapshot folder) pairs.
    """
    from omnijobs.errors import OmniJobsError
    from omnijobs.pipelines.registry import BUILTIN_DIR, load_registry

    extra = [p for p in settings.pipelines_path.split(os.pathsep) if p] + [str(BUILTIN_DIR / "real")]
    try:
        spec = load_registry(os.pathsep.join(extra)).get(target)
    except (KeyError, OmniJobsError):
        spec = None
    if spec is None:
        if not is_hub_id(target):
            raise ModelNotFound(f"'{target}' is neither a pipeline nor a hub id (owner/name)")
        models = [target]
    else:
        models = sorted({s.model for s in spec.stages.values() if s.model and is_hub_id(s.model)
                         and not (Path(settings.models_dir) / s.model).exists()})
    pulled = []
    for model in models:
        try:
            pulled.append((model, pull(model, revision)))
        except Exception as exc:  # offline, unknown id, no access: say which model and why
            raise ModelNotFound(f"could not fetch '{model}': {type(exc).__name__}: {exc}") from exc
    return pulled
