"""/v1/pipelines: what can be run, with each pipeline's stages and input schema."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import RegistryDep
from api.schemas import ErrorResponse

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])


@router.get("")
def list_pipelines(registry: RegistryDep) -> dict[str, Any]:
    return {"data": [spec.public() for spec in registry.all()]}


@router.get("/{name}", responses={404: {"model": ErrorResponse}})
def get_pipeline(name: str, registry: RegistryDep) -> dict[str, Any]:
    return registry.get(name).public()
