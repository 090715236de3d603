"""OpenAI's asynchronous video API on durable jobs: create, retrieve, list, download, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from api.auth import owner_scope
from api.deps import PrincipalDep, RegistryDep, StoreDep, ValuesDep
from api.openai.errors import OpenAIRoute
from api.openai.jobs import created, job_headers, submit_job
from api.openai.media import as_size_error, extra_params, output_file, size_params
from api.openai.models import model_for, routes_of
from omnijobs.cancel import cancel_job
from omnijobs.errors import NotFound, RequestError
from omnijobs.store.records import JobView

router = APIRouter(prefix="/v1/videos", tags=["openai"], route_class=OpenAIRoute)
STATUS = {"queued": "queued", "running": "in_progress", "succeeded": "completed", "failed": "failed",
          "canceled": "failed"}
EXTRAS = ("num_inference_steps", "seed", "negative_prompt", "guidance_scale", "num_frames")


def video_object(job: JobView) -> dict:
    steps = [r.progress for r in job.stages if r.progress and r.progress.get("steps")]
    progress = 100 if job.status == "succeeded" else (
        int(100 * steps[-1]["step"] / steps[-1]["steps"]) if steps else 0)
    width, height = next(((r.params.get("width"), r.params.get("height")) for r in job.stages
                          if "width" in (r.params or {})), (None, None))
    error = None
    if job.status in ("failed", "canceled"):
        message = (job.error or {}).get("message") if isinstance(job.error, dict) else None
        error = {"code": f"job_{job.status}", "message": message or f"job {job.status}"}
    return {"id": str(job.id), "object": "video", "model": job.pipeline, "status": STATUS[job.status],
            "progress": progress, "created_at": created(job),
            "completed_at": int(job.finished_at.timestamp()) if job.finished_at else None,
            "size": f"{width}x{height}" if width else None, "seconds": None, "error": error,
            "prompt": job.inputs.get("prompt")}


async def _video_job(request: Request, video_id: str, principal) -> JobView:
    store = request.app.state.store
    job = await run_in_threadpool(store.get_job, video_id, owner_scope(principal))
    if "videos" not in routes_of(request.app.state.registry.get(job.pipeline)):
        raise NotFound(f"no video '{video_id}'", field="video_id")
    return job


@router.post("", response_model=None)
async def create_video(request: Request, registry: RegistryDep, principal: PrincipalDep) -> JSONResponse:
    """Multipart (as the `openai` client sends it) or JSON: `model`, `prompt`, `size`, diffusion extras."""
    if request.headers.get("content-type", "").startswith("application/json"):
        form = await request.json()
        if not isinstance(form, dict):
            raise RequestError("the body must be an object", field="body")
    else:
        form = {k: v for k, v in (await request.form()).multi_items() if not hasattr(v, "read")}
    unknown = sorted(set(form) - {"model", "prompt", "size", "seconds", *EXTRAS})
    if unknown:
        raise RequestError(f"unknown parameter '{unknown[0]}'", field=unknown[0])
    for name in ("model", "prompt"):
        if not form.get(name):
            raise RequestError(f"'{name}' is required", field=name)
    if form.get("seconds") not in (None, ""):
        raise RequestError("seconds is not supported: choose the clip's length with num_frames", field="seconds")
    spec = model_for(registry, str(form["model"]), "videos")
    extras = {k: _number(form[k], k) if k != "negative_prompt" else form[k] for k in EXTRAS if k in form}
    params = {**size_params(spec, form.get("size")), **extra_params(spec, extras)}
    try:
        job = await submit_job(request, principal, spec, {"prompt": form["prompt"]}, params, {"openai": "videos"},
                               {"prompt": "prompt"})
    except RequestError as exc:
        raise as_size_error(exc) from None
    return JSONResponse(video_object(job), headers=job_headers(job))


def _number(value, name: str):
    try:
        return float(value) if "." in str(value) else int(value)
    except ValueError:
        raise RequestError(f"'{name}' must be a number", field=name) from None


@router.get("", response_model=None)
async def list_videos(request: Request, store: StoreDep, registry: RegistryDep, principal: PrincipalDep,
                      limit: Annotated[int, Query(ge=1, le=100)] = 20) -> JSONResponse:
    jobs = []
    for spec in registry.all():
        if "videos" in routes_of(spec):
            page, _ = await run_in_threadpool(lambda s=spec: store.list_jobs(
                owner=owner_scope(principal), pipeline=s.name, limit=limit))
            jobs += page
    jobs = sorted(jobs, key=lambda j: j.created_at, reverse=True)[:limit]
    data = [video_object(j) for j in jobs]
    return JSONResponse({"object": "list", "data": data, "has_more": False,
                         "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})


@router.get("/{video_id}", response_model=None)
async def retrieve_video(video_id: str, request: Request, principal: PrincipalDep) -> JSONResponse:
    job = await _video_job(request, video_id, principal)
    return JSONResponse(video_object(job), headers=job_headers(job))


@router.get("/{video_id}/content", response_model=None)
async def video_content(video_id: str, request: Request, principal: PrincipalDep) -> Response:
    job = await _video_job(request, video_id, principal)
    if job.status != "succeeded":
        raise RequestError(f"video '{video_id}' is {STATUS[job.status]}; its content is not there", field="video_id")
    out = await output_file(request, job, "video")
    return Response(out.data, media_type=out.content_type, headers=job_headers(job))


@router.delete("/{video_id}", response_model=None)
async def delete_video(video_id: str, request: Request, principal: PrincipalDep, values: ValuesDep) -> JSONResponse:
    """Cancels the job if it still runs; the job stays readable through /v1/jobs (the store keeps every job)."""
    job = await _video_job(request, video_id, principal)
    if job.status in ("queued", "running"):
        await run_in_threadpool(cancel_job, request.app.state.store, values, video_id, owner_scope(principal))
    return JSONResponse({"id": str(job.id), "object": "video.deleted", "deleted": True}, headers=job_headers(job))
