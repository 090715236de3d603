"""Demo jobs: an example request for any pipeline, built from its input schema, run over HTTP.

Pipelines are discovered, not listed: a new pipeline gets a demo job as soon as it ships.
"""

from __future__ import annotations

import base64
import io
import math
import mimetypes
import struct
import threading
import time
import wave
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

FINAL = ("succeeded", "failed", "canceled")
JOB_TIMEOUT_S = 600.0
DEMO_PROMPT = "A lighthouse by the sea at dusk."

# Smaller than the defaults so a demo on CPU takes seconds; only params a stage declares are sent.
QUICK_PARAMS: dict[str, Any] = {"max_tokens": 12, "seed": 1, "steps": 2, "num_inference_steps": 2}


# Not every system's mimetypes table knows these (audio/wav especially).
_EXTENSIONS = {"image/png": ".png", "audio/wav": ".wav", "audio/x-wav": ".wav", "video/mp4": ".mp4"}


def tiny_png(size: int = 32) -> bytes:
    """A gradient PNG, written by hand so the core needs no imaging package."""
    rows = b"".join(b"\x00" + bytes(v for x in range(size) for v in (x * 8 % 256, y * 8 % 256, 128))
                   for y in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def tiny_wav(seconds: float = 0.5, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                               for i in range(int(seconds * rate))))
    return buf.getvalue()


def _data_uri(content_type: str, data: bytes) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


_EXAMPLES: dict[str, Callable[[], Any]] = {
    "text": lambda: DEMO_PROMPT,
    "integer": lambda: 1,
    "number": lambda: 0.5,
    "boolean": lambda: False,
    "json": dict,
    "image": lambda: _data_uri("image/png", tiny_png()),
    "audio": lambda: _data_uri("audio/wav", tiny_wav()),
}


def example_request(spec) -> dict | None:
    """A request body for the pipeline, or None if one of its required inputs has no example here."""
    inputs = {}
    for name, port in spec.inputs.items():
        if not port.required:
            continue
        make = _EXAMPLES.get(port.type)
        if make is None:
            return None
        inputs[name] = make()
    # One optional image too, if the pipeline takes one and needs none: a vision model then sees a picture.
    if not any(spec.inputs[n].type == "image" for n in inputs):
        optional = [n for n, p in spec.inputs.items() if not p.required and p.type == "image"]
        if optional:
            inputs[optional[0]] = _EXAMPLES["image"]()
    params = {
        stage_name: {k: v for k, v in QUICK_PARAMS.items() if k in stage.params}
        for stage_name, stage in spec.stages.items()
    }
    return {"pipeline": spec.name, "inputs": inputs, "params": {k: v for k, v in params.items() if v}}


def run_demo_jobs(client, specs: list, out_dir: Path, echo: Callable[[str], None],
                  stop: threading.Event | None = None) -> int:
    """Submit one demo job per pipeline, wait for all, print their outputs and what each file holds.

    Returns how many did not succeed, counting a job whose file output is silent or empty as failed.
    """
    stop = stop or threading.Event()
    jobs = {}
    failed = 0
    for spec in specs:
        body = example_request(spec)
        if body is None:
            echo(f"{spec.name}: no demo input for its required inputs; skipped")
            continue
        resp = client.post("/v1/jobs", json=body)
        if resp.status_code >= 400:
            echo(f"{spec.name}: refused with {resp.status_code}: {resp.text}")
            failed += 1
            continue
        jobs[spec.name] = resp.json()
        echo(f"submitted a {spec.name} job: {jobs[spec.name]['id']}")
    for job in jobs.values():
        job = _wait(client, job["id"], stop)
        if job is None:
            return failed + 1
        problems = _print_job(client, job, out_dir, echo)
        failed += job["status"] != "succeeded" or problems > 0
    return failed


def _wait(client, job_id: str, stop: threading.Event) -> dict | None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in FINAL:
            return job
        if stop.wait(0.2):
            return None
    raise TimeoutError(f"job {job_id} did not finish in {JOB_TIMEOUT_S:.0f}s")


def _print_job(client, job: dict, out_dir: Path, echo: Callable[[str], None]) -> int:
    """Print the job; returns how many of its file outputs are silent, empty or failed to download."""
    echo(f"\n{job['pipeline']} job {job['id']}: {job['status']} in {job['metrics'].get('total_s')}s")
    if job["status"] != "succeeded":
        echo(f"  error: {job.get('error')}")
    problems = 0
    for name, value in (job.get("outputs") or {}).items():
        if isinstance(value, dict) and "url" in value:
            line = _download(client, job['id'], name, value, out_dir)
            problems += "WARNING" in line or "download failed" in line
            echo(f"  {name}: {line}")
        else:
            echo(f"  {name}: {value!r}")
    for stage in job["stages"]:
        echo(f"    stage {stage['name']}: {stage['status']}, batch of {stage['batch_size']}, ran {stage['run_s']}s")
    return problems


def _download(client, job_id: str, name: str, ref: dict, out_dir: Path) -> str:
    resp = client.get(ref["url"])
    if resp.status_code != 200:
        return f"(download failed: {resp.status_code} {resp.text[:200]})"
    content_type = ref.get("content_type") or resp.headers.get("content-type", "")
    kind = content_type.split(";")[0].strip()
    ext = _EXTENSIONS.get(kind) or mimetypes.guess_extension(kind) or ".bin"
    path = out_dir / job_id / f"{name}{ext}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(resp.content)
    from omnijobs.describe_media import describe

    what = describe(resp.content, kind)
    warning = "  WARNING: silent" if what.silent else "  WARNING: empty" if what.empty else ""
    return f"{path} ({content_type}, {len(resp.content)} bytes: {what.line}){warning}"
