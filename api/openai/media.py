"""Shared by the image, audio and video routes: diffusion params onto pipeline params, file outputs."""

from __future__ import annotations

import io
import re
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image, ImageSequence

from omnijobs.errors import RequestError
from omnijobs.outputs import OutputFile, read_output
from omnijobs.pipelines.spec import PipelineSpec
from omnijobs.store.records import JobView

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


def size_params(spec: PipelineSpec, size: str | None) -> dict[str, int]:
    """"WxH" as the pipeline's width and height params (their bounds are checked at submit, as `size`)."""
    if size in (None, "", "auto"):
        return {}
    m = _SIZE.match(size)
    if not m:
        raise RequestError(f"size must be 'WIDTHxHEIGHT', e.g. '512x512', got '{size}'", field="size")
    if not any("width" in s.params and "height" in s.params for s in spec.stages.values()):
        raise RequestError(f"model '{spec.name}' has no size to choose", field="size")
    return {"width": int(m.group(1)), "height": int(m.group(2))}


def extra_params(spec: PipelineSpec, extras: dict[str, Any]) -> dict[str, Any]:
    """Extra body params (num_inference_steps, seed, ...) for every stage that declares them; others are 400s."""
    declared = {p for s in spec.stages.values() for p in s.params}
    for name, value in extras.items():
        if value is not None and name not in declared:
            raise RequestError(f"'{name}' is not a parameter of model '{spec.name}' (it takes: "
                               f"{', '.join(sorted(declared)) or 'none'})", field=name)
    return {k: v for k, v in extras.items() if v is not None}


def as_size_error(exc: RequestError) -> RequestError:
    if exc.field and exc.field.rpartition(".")[2] in ("width", "height"):
        exc.field = "size"
    return exc


async def output_file(request: Request, job: JobView, name: str) -> OutputFile:
    state = request.app.state
    return await run_in_threadpool(read_output, state.store, state.values, str(job.id), name)


def png_frames(data: bytes) -> list[bytes]:
    """Each frame of an animated PNG as a PNG of its own: OpenAI's `data` is a list of images."""
    out = []
    with Image.open(io.BytesIO(data)) as image:
        for frame in ImageSequence.Iterator(image):
            buf = io.BytesIO()
            frame.copy().save(buf, format="PNG")
            out.append(buf.getvalue())
    return out
