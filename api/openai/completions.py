"""POST /v1/completions: a plain prompt on a text pipeline, answered whole or as a chunk stream."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import PrincipalDep, RegistryDep
from api.openai.chat import StreamOptions, finish_reason, usage_of
from api.openai.errors import OpenAIRoute
from api.openai.jobs import created, job_headers, output_stage, stage_params, submit_job, wait_job
from api.openai.models import model_for
from api.openai.streams import text_stream
from omnijobs.errors import RequestError

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    echo: bool = False


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request, registry: RegistryDep,
                      principal: PrincipalDep) -> Response:
    spec = model_for(registry, body.model, "completions")
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise RequestError("prompt must be one string (a list of several is a batch: send one request each)",
                               field="prompt")
        prompt = prompt[0]
    if body.n != 1:
        raise RequestError("n must be 1: send one request per choice", field="n")
    if body.echo:
        raise RequestError("echo is not supported", field="echo")
    stage = output_stage(spec, "text")
    params = stage_params(spec, stage, {
        "max_tokens": (body.max_tokens, "max_tokens"), "temperature": (body.temperature, "temperature"),
        "top_p": (body.top_p, "top_p"), "seed": (body.seed, "seed"), "stop": (body.stop or None, "stop")})
    metadata = {"openai": "completions", **({"user": body.user} if body.user else {})}
    job = await submit_job(request, principal, spec, {"prompt": prompt}, params, metadata, {"prompt": "prompt"})
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = text_stream(request, job, spec, stage, "text_completion", lambda text, first: {"text": text or ""},
                             usage)
        return StreamingResponse(chunks, media_type="text/event-stream", headers={
            **job_headers(job), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    done = await wait_job(request, job)
    return JSONResponse({
        "id": f"cmpl-{done.id}", "object": "text_completion", "created": created(done), "model": spec.name,
        "choices": [{"index": 0, "text": (done.outputs or {}).get("text", ""), "finish_reason": finish_reason(done, stage),
                     "logprobs": None}],
        "usage": usage_of(done, stage)}, headers=job_headers(done))
