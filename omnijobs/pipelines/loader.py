"""Reading pipeline files: YAML -> PipelineSpec, every error naming file, stage and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from omnijobs.errors import SpecError
from omnijobs.pipelines import graph
from omnijobs.pipelines.spec import PipelineSpec


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(None, None, f"keys must be plain values (line {line})")
        if key in seen:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}' (line {line})")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_file(path: Path) -> PipelineSpec:
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(source, f"cannot read: {exc.strerror}") from exc
    return parse(text, source)


def parse(text: str, source: str = "<memory>") -> PipelineSpec:
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise SpecError(source, f"invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(source, "a pipeline file must be a mapping")
    stages = data.get("stages")
    if isinstance(stages, dict):
        for name, body in stages.items():
            if isinstance(body, dict) and body.get("name", name) != name:
                raise SpecError(source, f"says name '{body['name']}'; the key is the stage's name", str(name), "name")
    try:
        spec = PipelineSpec.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise _spec_error(source, exc) from None
    graph.validate(spec)
    return spec


def _spec_error(source: str, exc: ValidationError) -> SpecError:
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"]]
    stage = None
    if len(loc) >= 2 and loc[0] == "stages":
        stage, loc = loc[1], loc[2:]
    field = ".".join(loc) or None
    return SpecError(source, first["msg"], stage=stage, field=field)
