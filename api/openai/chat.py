"""POST /v1/chat/completions: messages onto a text pipeline's inputs; a reply or a chunk stream."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import PrincipalDep, RegistryDep
from api.openai.chat_audio import audio_chat_stream
from api.openai.errors import OpenAIRoute
from api.openai.jobs import (
    created,
    job_headers,
    output_stage,
    stage_outputs,
    stage_params,
    submit_job,
    wait_job,
)
from api.openai.models import model_for
from api.openai.speech_stream import pcm_of
from api.openai.streams import text_stream
from omnijobs.errors import RequestError
from omnijobs.pipelines.spec import PipelineSpec
from omnijobs.store.records import JobView

router = APIRouter(prefix="/v1/chat", tags=["openai"], route_class=OpenAIRoute)
IMAGE_INPUTS = ("image", "image_2", "image_3")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageURL(_Strict):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class InputAudio(_Strict):
    data: str
    format: Literal["wav"]


class Part(_Strict):
    type: Literal["text", "image_url", "input_audio"]
    text: str | None = None
    image_url: ImageURL | None = None
    input_audio: InputAudio | None = None


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class AudioOptions(_Strict):
    # "pcm16": raw 16-bit mono samples at the model's rate, the only format a stream can carry.
    format: Literal["wav", "pcm16"] = "wav"
    voice: str | None = None


class ChatRequest(_Strict):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOptions | None = None


@router.post("/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request, registry: RegistryDep,
                           principal: PrincipalDep) -> Response:
    spec = model_for(registry, body.model, "chat.completions")
    inputs, fields = chat_inputs(spec, body)
    stage = output_stage(spec, "text")
    params = stage_params(spec, stage, {
        "max_tokens": (body.max_completion_tokens or body.max_tokens,
                       "max_completion_tokens" if body.max_completion_tokens else "max_tokens"),
        "temperature": (body.temperature, "temperature"), "top_p": (body.top_p, "top_p"),
        "seed": (body.seed, "seed"), "stop": (body.stop or None, "stop"),
    })
    check_common(body, spec)
    params.update(_voice_params(spec, body))
    metadata = {**(body.metadata or {}), "openai": "chat.completions", **({"user": body.user} if body.user else {})}
    job = await submit_job(request, principal, spec, inputs, params, metadata, fields)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        if "audio" in (body.modalities or []):
            chunks = audio_chat_stream(request, job, spec, stage, output_stage(spec, "audio"), usage)
        else:
            chunks = text_stream(request, job, spec, stage, "chat.completion.chunk", _chat_delta, usage)
        return StreamingResponse(chunks, media_type="text/event-stream", headers={
            **job_headers(job), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    done = await wait_job(request, job)
    return JSONResponse(chat_completion(done, spec, stage, await _audio(request, done, body)),
                        headers=job_headers(done))


def check_common(body: ChatRequest, spec: PipelineSpec) -> None:
    if body.n != 1:
        raise RequestError("n must be 1: each choice is a job of its own; send one request per choice", field="n")
    if body.stream_options is not None and not body.stream:
        raise RequestError("stream_options is only allowed with stream: true", field="stream_options")
    wants_audio = "audio" in (body.modalities or [])
    if wants_audio and "audio" not in spec.outputs:
        raise RequestError(f"model '{spec.name}' makes no audio; ask for modalities ['text']", field="modalities")
    if wants_audio and body.audio is None:
        raise RequestError("modalities with 'audio' need the audio parameter, e.g. {\"format\": \"wav\"}",
                           field="audio")
    if wants_audio and body.stream and body.audio.format != "pcm16":
        raise RequestError(f"audio.format '{body.audio.format}' cannot be streamed: with stream: true ask for "
                           "'pcm16'", field="audio.format")


def _voice_params(spec: PipelineSpec, body: ChatRequest) -> dict[str, dict[str, Any]]:
    """`audio.voice` as the speaker of the stage that has one (an omni talker)."""
    voice = body.audio.voice if body.audio and "audio" in (body.modalities or []) else None
    if voice is None:
        return {}
    stage = next((s for s in spec.stages.values() if "speaker" in s.params), None)
    if stage is None:
        raise RequestError(f"model '{spec.name}' has no voice to choose", field="audio.voice")
    choices = stage.params["speaker"].choices
    if choices and voice not in choices:
        raise RequestError(f"audio.voice must be one of {', '.join(map(str, choices))}; got '{voice}'",
                           field="audio.voice")
    return {stage.name: {"speaker": voice}}


def chat_inputs(spec: PipelineSpec, body: ChatRequest) -> tuple[dict[str, Any], dict[str, str]]:
    """Job inputs from the messages: system text, earlier turns as history, the last user turn's parts."""
    system, turns = [], []
    for i, m in enumerate(body.messages):
        if m.role in ("system", "developer"):
            system.append(_text_only(m, i))
        else:
            turns.append((i, m))
    if not turns or turns[-1][1].role != "user":
        raise RequestError("the last message must be from the user", field=f"messages[{len(body.messages) - 1}]")
    inputs: dict[str, Any] = {}
    fields: dict[str, str] = {}
    if system:
        if "system" not in spec.inputs:
            raise RequestError(f"model '{spec.name}' takes no system message", field="messages")
        inputs["system"] = "\n\n".join(system)
    if len(turns) > 1:
        if "history" not in spec.inputs:
            raise RequestError(f"model '{spec.name}' takes one user turn; earlier turns are not supported",
                               field="messages")
        inputs["history"] = [{"role": m.role, "content": _text_only(m, i)} for i, m in turns[:-1]]
    last_i, last = turns[-1]
    texts, images = [], []
    for j, part in enumerate(last.content if isinstance(last.content, list) else [Part(type="text", text=last.content or "")]):
        where = f"messages[{last_i}].content[{j}]"
        if part.type == "text":
            texts.append(part.text or "")
        elif part.type == "image_url":
            if part.image_url is None:
                raise RequestError("an image_url part needs image_url.url", field=f"{where}.image_url")
            images.append((part.image_url.url, f"{where}.image_url"))
        else:
            inputs["audio"] = _audio_input(spec, part, where, "audio" in inputs)
            fields["audio"] = f"{where}.input_audio"
    slots = [name for name in IMAGE_INPUTS if name in spec.inputs and spec.inputs[name].type == "image"]
    if len(images) > len(slots):
        raise RequestError(f"model '{spec.name}' takes {len(slots)} image(s), got {len(images)}",
                           field=images[len(slots)][1] if slots else images[0][1])
    for (url, where), name in zip(images, slots, strict=False):
        inputs[name], fields[name] = url, where
    inputs["prompt"] = "\n".join(texts)
    fields["prompt"] = f"messages[{last_i}].content"
    if "modalities" in spec.inputs:  # omni pipelines: text only unless audio is asked for
        inputs["modalities"] = body.modalities or ["text"]
    return inputs, fields


def _text_only(m: Message, i: int) -> str:
    if isinstance(m.content, list):
        if any(p.type != "text" for p in m.content):
            raise RequestError("only the last user message may carry images or audio", field=f"messages[{i}].content")
        return "\n".join(p.text or "" for p in m.content)
    return m.content or ""


def _audio_input(spec: PipelineSpec, part: Part, where: str, seen: bool) -> str:
    if "audio" not in spec.inputs or spec.inputs["audio"].type != "audio":
        raise RequestError(f"model '{spec.name}' takes no audio input", field=f"{where}.input_audio")
    if part.input_audio is None:
        raise RequestError("an input_audio part needs input_audio.data", field=f"{where}.input_audio")
    if seen:
        raise RequestError(f"model '{spec.name}' takes one audio clip", field=f"{where}.input_audio")
    try:
        base64.b64decode(part.input_audio.data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("input_audio.data is not valid base64", field=f"{where}.input_audio.data") from None
    return f"data:audio/wav;base64,{part.input_audio.data}"


def usage_of(job: JobView, stage: str) -> dict[str, int]:
    usage = stage_outputs(job, stage).get("usage") or {}
    p, c = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def finish_reason(job: JobView, stage: str) -> str:
    run = next((r for r in job.stages if r.stage == stage), None)
    limit = (run.params or {}).get("max_tokens") if run else None
    return "length" if limit and usage_of(job, stage)["completion_tokens"] >= int(limit) else "stop"


def chat_completion(job: JobView, spec: PipelineSpec, stage: str, audio: dict | None = None) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": (job.outputs or {}).get("text", "")}
    if audio is not None:
        message["audio"] = audio
    return {"id": f"chatcmpl-{job.id}", "object": "chat.completion", "created": created(job), "model": spec.name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(job, stage),
                         "logprobs": None}],
            "usage": usage_of(job, stage)}


def _chat_delta(text: str | None, first: bool) -> dict:
    if first:
        return {"delta": {"role": "assistant", "content": ""}}
    return {"delta": {"content": text} if text is not None else {}}


async def _audio(request: Request, job: JobView, body: ChatRequest) -> dict | None:
    if "audio" not in (body.modalities or []):
        return None
    from fastapi.concurrency import run_in_threadpool

    from omnijobs.outputs import read_output

    out = await run_in_threadpool(read_output, request.app.state.store, request.app.state.values, str(job.id),
                                  "audio")
    data = pcm_of(out.data)[1] if body.audio.format == "pcm16" else out.data
    return {"id": f"audio-{job.id}", "data": base64.b64encode(data).decode(),
            "expires_at": int(time.time()) + 24 * 3600, "transcript": (job.outputs or {}).get("text", "")}
