"""POST /v1/images/generations and /v1/images/edits on the image pipelines."""

from __future__ import annotations

import base64
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import BaseUrlDep, PrincipalDep, RegistryDep
from api.openai.errors import OpenAIRoute
from api.openai.jobs import created, job_headers, submit_job, wait_job
from api.openai.media import as_size_error, extra_params, output_file, png_frames, size_params
from api.openai.models import model_for
from omnijobs.errors import RequestError

router = APIRouter(prefix="/v1/images", tags=["openai"], route_class=OpenAIRoute)


class ImageRequest(BaseModel):
    # Extra diffusion params ride in the body beside the OpenAI fields (num_inference_steps, seed, ...).
    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: str = Field(min_length=1)
    n: int = Field(default=1, ge=1)
    size: str | None = None
    response_format: Literal["b64_json", "url"] = "b64_json"
    user: str | None = Field(default=None, max_length=256)
    num_inference_steps: int | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    guidance_scale: float | None = None
    layers: int | None = None  # qwen_image_layered: how many layers to split the image into


async def _run(request: Request, principal, spec, inputs: dict, body, base_url: str, fields: dict) -> JSONResponse:
    if body.n != 1:
        raise RequestError("n must be 1: each image is a job of its own; send one request per image", field="n")
    params = {**size_params(spec, body.size), **extra_params(spec, {
        "num_inference_steps": body.num_inference_steps, "seed": body.seed,
        "negative_prompt": body.negative_prompt, "guidance_scale": body.guidance_scale, "layers": body.layers})}
    try:
        job = await submit_job(request, principal, spec, inputs, params,
                               {"openai": "images", **({"user": body.user} if body.user else {})}, fields)
    except RequestError as exc:
        raise as_size_error(exc) from None
    done = await wait_job(request, job)
    output = "image" if "image" in spec.outputs else "layers"
    if body.response_format == "url":  # the layers' URL is their animated PNG, a frame per layer
        data = [{"url": f"{base_url}/v1/jobs/{done.id}/outputs/{output}"}]
    else:
        file = (await output_file(request, done, output)).data
        pngs = await run_in_threadpool(png_frames, file) if output == "layers" else [file]
        data = [{"b64_json": base64.b64encode(png).decode()} for png in pngs]
    return JSONResponse({"created": created(done), "data": data}, headers=job_headers(done))


@router.post("/generations", response_model=None)
async def generations(body: ImageRequest, request: Request, registry: RegistryDep, principal: PrincipalDep,
                      base_url: BaseUrlDep) -> JSONResponse:
    spec = model_for(registry, body.model, "images.generations")
    return await _run(request, principal, spec, {"prompt": body.prompt}, body, base_url, {"prompt": "prompt"})


@router.post("/edits", response_model=None)
async def edits(request: Request, registry: RegistryDep, principal: PrincipalDep, base_url: BaseUrlDep
                ) -> JSONResponse:
    """Multipart, as OpenAI's: `image` (a file), `prompt`, `model`, and the generation fields."""
    form = await request.form()
    fields = {k: v for k, v in form.multi_items() if not hasattr(v, "read")}
    files = [(k, v) for k, v in form.multi_items() if hasattr(v, "read")]
    images = [v for k, v in files if k in ("image", "image[]")]
    if len(images) != 1:
        raise RequestError("send exactly one image file as 'image'", field="image")
    try:
        body = ImageRequest(**{k: v for k, v in fields.items()})
    except Exception as exc:  # pydantic's message names the field
        raise RequestError(str(exc).splitlines()[1] if "\n" in str(exc) else str(exc), field="body") from None
    spec = model_for(registry, body.model, "images.edits")
    data = await images[0].read()
    content_type = images[0].content_type or "image/png"
    uri = f"data:{content_type};base64,{base64.b64encode(data).decode()}"
    return await _run(request, principal, spec, {"prompt": body.prompt, "image": uri}, body, base_url,
                      {"prompt": "prompt", "image": "image"})
