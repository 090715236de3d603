"""POST /v1/audio/speech: text in, the WAV (or raw PCM) bytes of a pipeline with an audio output out.

With `stream_format: "audio"` the body goes out as the audio is decoded (a streamed stage's
`audio` events), or all at once at the end where the pipeline does not stream its audio.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import PrincipalDep, RegistryDep
from api.openai.errors import OpenAIRoute
from api.openai.jobs import job_headers, output_stage, submit_job, wait_job
from api.openai.media import extra_params, output_file
from api.openai.models import model_for
from api.openai.speech_stream import MEDIA_TYPES, first_then_rest, pcm_of, speech_body

router = APIRouter(prefix="/v1/audio", tags=["openai"], route_class=OpenAIRoute)


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    input: str = Field(min_length=1)
    # Where the pipeline has a voice (an omni talker's `speaker`); others have none to choose.
    voice: str | None = None
    response_format: Literal["wav", "pcm"] = "wav"
    # "audio": the body streams as it is decoded. Without it, the body is sent once the job ends.
    stream_format: Literal["audio"] | None = None
    seed: int | None = None
    num_inference_steps: int | None = None
    seconds: float | None = None


@router.post("/speech", response_model=None)
async def speech(body: SpeechRequest, request: Request, registry: RegistryDep, principal: PrincipalDep) -> Response:
    spec = model_for(registry, body.model, "audio.speech")
    has_voice = any("speaker" in s.params for s in spec.stages.values())
    params = extra_params(spec, {"seed": body.seed, "num_inference_steps": body.num_inference_steps,
                                 "seconds": body.seconds, "speaker": body.voice if has_voice else None})
    inputs = {"prompt": body.input, **({"modalities": ["text", "audio"]} if "modalities" in spec.inputs else {})}
    job = await submit_job(request, principal, spec, inputs, params, {"openai": "audio.speech"},
                           {"prompt": "input"})
    if body.stream_format == "audio":
        chunks = speech_body(request, job, output_stage(spec, "audio"), body.response_format)
        return StreamingResponse(await first_then_rest(request, job, chunks), media_type=MEDIA_TYPES[
            body.response_format], headers={**job_headers(job), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    done = await wait_job(request, job)
    out = await output_file(request, done, "audio")
    if body.response_format == "pcm":
        return Response(pcm_of(out.data)[1], media_type=MEDIA_TYPES["pcm"], headers=job_headers(done))
    return Response(out.data, media_type=out.content_type, headers=job_headers(done))
