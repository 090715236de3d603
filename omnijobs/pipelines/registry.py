"""All pipelines a process knows: the shipped ones plus those in the configured folders."""

from __future__ import annotations

import os
from pathlib import Path

from omnijobs.errors import NotFound, SpecError
from omnijobs.pipelines.loader import load_file
from omnijobs.pipelines.spec import PipelineSpec

BUILTIN_DIR = Path(__file__).parent / "builtin"


class PipelineRegistry:
    def __init__(self, specs: list[PipelineSpec]):
        self._specs: dict[str, PipelineSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                other = self._specs[spec.name].source
                raise SpecError(spec.source, f"pipeline '{spec.name}' is already defined in {other}", field="name")
            self._specs[spec.name] = spec

    def get(self, name: str) -> PipelineSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise NotFound(f"unknown pipeline '{name}'", field="pipeline") from None

    def names(self) -> list[str]:
        return sorted(self._specs)

    def all(self) -> list[PipelineSpec]:
        return [self._specs[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._specs


def load_registry(extra_paths: str | list[Path] = "") -> PipelineRegistry:
    """Load shipped pipelines, then every *.yaml in the extra folders (or files)."""
    if isinstance(extra_paths, str):
        extra_paths = [Path(p) for p in extra_paths.split(os.pathsep) if p]
    files = sorted(BUILTIN_DIR.glob("*.yaml"))
    for path in extra_paths:
        files += sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    return PipelineRegistry([load_file(f) for f in files])
