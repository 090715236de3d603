"""Checking a job's inputs and params against its pipeline before anything is written."""

from __future__ import annotations

import json
import math
from typing import Any

from omnijobs.errors import InvalidInput
from omnijobs.pipelines.spec import InputSpec, ParamSpec, PipelineSpec


def validate_inputs(spec: PipelineSpec, inputs: Any) -> dict[str, Any]:
    """Return the inputs with defaults filled in; raise InvalidInput naming the field."""
    if not isinstance(inputs, dict):
        raise InvalidInput("inputs must be an object", field="inputs")
    unknown = sorted(set(inputs) - set(spec.inputs))
    if unknown:
        known = ", ".join(sorted(spec.inputs))
        raise InvalidInput(
            f"unknown input '{unknown[0]}' for pipeline '{spec.name}' (inputs: {known})", field=f"inputs.{unknown[0]}"
        )
    clean: dict[str, Any] = {}
    for name, port in spec.inputs.items():
        field = f"inputs.{name}"
        if inputs.get(name) is None:
            if port.required and port.default is None:
                raise InvalidInput(f"missing required input '{name}' ({port.type})", field=field)
            if port.default is not None:
                clean[name] = port.default
            continue
        clean[name] = _check_input(port, inputs[name], field)
    return clean


def _check_input(port: InputSpec, value: Any, field: str) -> Any:
    kind = port.type
    if kind == "text":
        if not isinstance(value, str):
            raise InvalidInput(f"input must be a string, got {_kind(value)}", field=field)
        if port.max_length is not None and len(value) > port.max_length:
            raise InvalidInput(f"input is {len(value)} characters; the limit is {port.max_length}", field=field)
        return value
    if kind == "tokens":
        if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            raise InvalidInput("input must be a list of integer token ids", field=field)
        if port.max_length is not None and len(value) > port.max_length:
            raise InvalidInput(f"input has {len(value)} tokens; the limit is {port.max_length}", field=field)
        return value
    if kind in ("integer", "number", "boolean"):
        return _check_scalar(kind, value, field)
    if kind in ("image", "audio", "video"):
        if not isinstance(value, str) or not value:
            raise InvalidInput(
                f"input must be a file reference (\"file:<id>\", a data URI or an http(s) URL), got {_kind(value)}",
                field=field,
            )
        return value
    return value  # json: any value


def validate_params(spec: PipelineSpec, params: Any) -> dict[str, dict[str, Any]]:
    """Normalise job params to {stage: {param: value}} overrides.

    A job may give `{"<stage>": {...}}` for one stage or `{"<param>": value}` for every stage
    that has that param.
    """
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput("params must be an object", field="params")
    out: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        if key in spec.stages:
            if not isinstance(value, dict):
                raise InvalidInput(f"params for stage '{key}' must be an object", field=f"params.{key}")
            for name, v in value.items():
                out.setdefault(key, {})[name] = _check_param(spec, key, name, v, f"params.{key}.{name}")
            continue
        owners = [s.name for s in spec.stages.values() if key in s.params]
        if not owners:
            raise InvalidInput(f"no stage of pipeline '{spec.name}' has a param '{key}'", field=f"params.{key}")
        for stage in owners:
            checked = _check_param(spec, stage, key, value, f"params.{key}")
            out.setdefault(stage, {}).setdefault(key, checked)
    return out


def _check_param(spec: PipelineSpec, stage: str, name: str, value: Any, field: str) -> Any:
    param: ParamSpec | None = spec.stages[stage].params.get(name)
    if param is None:
        known = ", ".join(sorted(spec.stages[stage].params)) or "none"
        raise InvalidInput(f"stage '{stage}' has no param '{name}' (params: {known})", field=field)
    if value is None:
        if param.nullable:
            return None
        raise InvalidInput("param may not be null", field=field)
    if param.type == "string":
        if not isinstance(value, str):
            raise InvalidInput(f"param must be a string, got {_kind(value)}", field=field)
    elif param.type in ("integer", "number", "boolean"):
        value = _check_scalar(param.type, value, field)
    if param.choices is not None and value not in param.choices:
        raise InvalidInput(f"param must be one of {param.choices}", field=field)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if param.min is not None and value < param.min:
            raise InvalidInput(f"param must be >= {_num(param.min)}, got {value}", field=field)
        if param.max is not None and value > param.max:
            raise InvalidInput(f"param must be <= {_num(param.max)}, got {value}", field=field)
        if param.multiple_of is not None and value % param.multiple_of:
            raise InvalidInput(f"param must be a multiple of {param.multiple_of}, got {value}", field=field)
    return value


def _check_scalar(kind: str, value: Any, field: str) -> Any:
    if kind == "boolean":
        if not isinstance(value, bool):
            raise InvalidInput(f"must be a boolean, got {_kind(value)}", field=field)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"must be {'an integer' if kind == 'integer' else 'a number'}, got {_kind(value)}", field=field)
    if kind == "integer":
        if isinstance(value, float):
            if not value.is_integer():
                raise InvalidInput(f"must be an integer, got {value}", field=field)
            value = int(value)
        return value
    if not math.isfinite(value):
        raise InvalidInput("must be a finite number", field=field)
    return float(value)


def effective_params(spec: PipelineSpec, stage: str, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {**spec.stages[stage].default_params(), **overrides.get(stage, {})}


def _kind(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# Deeper JSON than this in a job's inputs, params or metadata is refused: no job needs it, and
# every later walk over the value (storage, rendering) would pay for it.
MAX_DEPTH = 32


def reject_nul(value: Any, field: str = "") -> None:
    """Refuse what the job's JSON columns cannot hold or should not: NUL characters and lone
    UTF-16 surrogates (in keys too), NaN and Infinity, nesting deeper than MAX_DEPTH.

    Walks without recursion, so a hostile value cannot exhaust the stack.
    """
    stack: list[tuple[Any, str, int]] = [(value, field, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            _check_string(item, where)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidInput("numbers must be finite (NaN and Infinity are not JSON)", field=where or None)
        elif isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                raise InvalidInput(f"value is nested more than {MAX_DEPTH} levels deep", field=where or None)
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for k, v in pairs:
                if isinstance(k, str):  # a bad key is named by the object holding it
                    _check_string(k, where)
                stack.append((v, f"{where}.{k}" if where else str(k), depth + 1))


def _check_string(value: str, field: str) -> None:
    if "\x00" in value:
        raise InvalidInput("strings may not contain NUL (\\u0000) characters", field=field or None)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("strings may not contain lone UTF-16 surrogates (such as \\ud800)",
                           field=field or None) from None


def check_metadata(metadata: Any, max_bytes: int) -> None:
    """A job's metadata is the client's own note: an object, and small (metadata_max_bytes)."""
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise InvalidInput("metadata must be an object", field="metadata")
    reject_nul(metadata, "metadata")
    size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
    if size > max_bytes:
        raise InvalidInput(f"metadata is {size} bytes as JSON; the limit (metadata_max_bytes) is {max_bytes}",
                       field="metadata")

