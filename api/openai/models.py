"""GET /v1/models: one model per pipeline that can serve an OpenAI route (id = pipeline name)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import RegistryDep
from api.openai.errors import OpenAIRoute
from omnijobs.errors import NotFound, RequestError
from omnijobs.pipelines.spec import PipelineSpec

router = APIRouter(prefix="/v1/models", tags=["openai"], route_class=OpenAIRoute)

# What each route needs of a pipeline: the job inputs and outputs it maps onto.
ROUTES = {
    "chat.completions": lambda s: _has(s, "prompt", "text") and "text" in s.outputs,
    "completions": lambda s: _has(s, "prompt", "text") and "text" in s.outputs and not _required_media(s),
    "images.generations": lambda s: _has(s, "prompt", "text") and "image" in s.outputs and not _required_media(s),
    # An edit returns an image, or the layers an image splits into (qwen_image_layered).
    "images.edits": lambda s: _has(s, "image", "image") and _has(s, "prompt", "text")
    and ("image" in s.outputs or "layers" in s.outputs),
    "audio.speech": lambda s: _has(s, "prompt", "text") and "audio" in s.outputs and not _required_media(s),
    "videos": lambda s: _has(s, "prompt", "text") and "video" in s.outputs and not _required_media(s),
}


def _has(spec: PipelineSpec, name: str, kind: str) -> bool:
    return name in spec.inputs and spec.inputs[name].type == kind


def _required_media(spec: PipelineSpec) -> bool:
    return any(p.required and p.type in ("image", "audio", "video") for p in spec.inputs.values())


def routes_of(spec: PipelineSpec) -> list[str]:
    return [route for route, serves in ROUTES.items() if serves(spec)]


def model_for(registry, model: str, route: str, param: str = "model") -> PipelineSpec:
    """The pipeline named `model` if it serves `route`; a 404 or 400 naming the field otherwise."""
    try:
        spec = registry.get(model)
    except RequestError:
        raise NotFound(f"The model '{model}' does not exist", field=param) from None
    if route not in routes_of(spec):
        served = ", ".join(s.name for s in registry.all() if route in routes_of(s)) or "none"
        raise RequestError(f"The model '{model}' does not serve {route} (models that do: {served})", field=param)
    return spec


def model_object(spec: PipelineSpec) -> dict:
    return {"id": spec.name, "object": "model", "created": 0, "owned_by": "omnijobs",
            "description": spec.description.strip(), "routes": routes_of(spec)}


@router.get("")
def list_models(registry: RegistryDep) -> dict:
    return {"object": "list", "data": [model_object(s) for s in registry.all() if routes_of(s)]}


@router.get("/{model_id}")
def get_model(model_id: str, registry: RegistryDep) -> dict:
    try:
        spec = registry.get(model_id)
    except RequestError:
        raise NotFound(f"The model '{model_id}' does not exist", field="model") from None
    if not routes_of(spec):
        raise NotFound(f"The model '{model_id}' does not exist", field="model")
    return model_object(spec)
