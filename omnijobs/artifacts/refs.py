"""How a value stored through a connector is written in a row: a small JSON reference.

The same shape is used for a stage's outputs, a job's uploaded inputs and the job's final
outputs, so the runner, the API and the cleanup code read one format.
"""

from __future__ import annotations

from typing import Any

REF_KEY = "artifact"


def make_ref(uri: str, type_: str, content_type: str, nbytes: int) -> dict[str, Any]:
    return {REF_KEY: uri, "type": type_, "content_type": content_type, "bytes": nbytes}


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get(REF_KEY), str)


def refs_in(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every reference among a row's values (top level only: ports hold one value each)."""
    return [v for v in (values or {}).values() if is_ref(v)]
