"""The one path every OpenAI route takes: submit an ordinary job, then wait for it or stream it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from api.openai.errors import JOB_HEADER, OpenAIError
from omnijobs.cancel import cancel_job
from omnijobs.errors import RequestError
from omnijobs.pipelines.spec import PipelineSpec
from omnijobs.store.keys import Principal
from omnijobs.store.records import JobView
from omnijobs.submit import submit
from omnijobs.streaming.follow import FINAL

log = logging.getLogger("omnijobs.api.openai")


def output_stage(spec: PipelineSpec, output: str) -> str:
    """The stage that makes a job output (deltas of that stage are the output's stream)."""
    return spec.outputs[output].partition(".")[0]


def stage_params(spec: PipelineSpec, stage: str, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Request params as overrides of one stage; a param the stage does not take is a 400 naming it."""
    clean = {}
    for name, (value, param) in params.items():
        if value is None:
            continue
        if name not in spec.stages[stage].params:
            raise RequestError(f"'{param}' is not supported by model '{spec.name}'", field=param)
        clean[name] = value
    return {stage: clean} if clean else {}


async def submit_job(request: Request, principal: Principal, spec: PipelineSpec, inputs: dict[str, Any],
                     params: dict[str, Any], metadata: dict | None = None,
                     fields: dict[str, str] | None = None) -> JobView:
    """Submit through the same admission, checks and store as POST /v1/jobs.

    `fields` maps job input names to the request's own parameter names, so an error names what
    the client sent (`messages[0].content[1].image_url`, not `inputs.image`).
    """
    state = request.app.state
    try:
        await run_in_threadpool(state.admission.check, principal.id, spec)
        job, _ = await run_in_threadpool(lambda: submit(
            state.store, state.registry, state.publisher, pipeline=spec.name, inputs=inputs, params=params,
            metadata=metadata, media=state.media, allowed_hosts=state.settings.private_hosts_allowed,
            owner=principal.id,
        ))
    except RequestError as exc:
        name = (exc.field or "").removeprefix("inputs.").partition(".")[0]
        if fields and name in fields:
            exc.message = exc.message.replace(f"inputs.{name}", fields[name])
            exc.field = fields[name]
        elif exc.field and exc.field.startswith("params."):
            exc.field = exc.field.rpartition(".")[2]
        raise
    return job


def cancel_in_background(request: Request, job_id: str) -> None:
    """Cancel a job nobody waits for any more, off the event loop (also from a closing generator)."""
    state = request.app.state
    if not state.settings.openai_cancel_on_disconnect:
        return

    def run() -> None:
        try:
            cancel_job(state.store, state.values, job_id)
            log.info("client went away: job %s canceled", job_id)
        except RequestError:
            pass  # already final
        except Exception:
            log.exception("cancel of job %s after a disconnect failed", job_id)

    threading.Thread(target=run, name=f"cancel-{job_id}", daemon=True).start()


async def until_disconnected(request: Request) -> None:
    """Returns once the client has gone (its connection's disconnect message)."""
    while (await request.receive())["type"] != "http.disconnect":
        continue


async def wait_job(request: Request, job: JobView) -> JobView:
    """The job once final, within `openai_wait_s`; a client that leaves meanwhile cancels it."""
    state = request.app.state
    job_id = str(job.id)

    async def watch() -> None:
        await until_disconnected(request)
        cancel_in_background(request, job_id)

    watcher = asyncio.create_task(watch())
    try:
        done = await state.follower.wait(job_id, state.settings.openai_wait_s)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if done.status not in FINAL:
        raise OpenAIError(504, f"job {job_id} is still {done.status} after {state.settings.openai_wait_s:g} s; it "
                               f"goes on: follow it at /v1/jobs/{job_id}", "timeout", job_id)
    return ensure_succeeded(done)


def ensure_succeeded(job: JobView) -> JobView:
    if job.status == "succeeded":
        return job
    message = (job.error or {}).get("message") if isinstance(job.error, dict) else None
    raise OpenAIError(500, f"job {job.id} {job.status}" + (f": {message}" if message else ""), f"job_{job.status}",
                      str(job.id))


def stage_outputs(job: JobView, stage: str) -> dict[str, Any]:
    for run in job.stages:
        if run.stage == stage:
            return run.outputs or {}
    return {}


def job_headers(job: JobView) -> dict[str, str]:
    return {JOB_HEADER: str(job.id)}


def created(job: JobView) -> int:
    return int(job.created_at.timestamp())
