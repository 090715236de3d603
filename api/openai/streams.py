"""A text job as OpenAI stream chunks: one chunk per delta the stage publishes, `[DONE]` last.

Framed with FastAPI's SSE encoder. Without a channel (dev mode) no deltas arrive and the text
comes in one chunk at the end; either way the chunks join to the stored text.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.sse import format_sse_event

from omnijobs.pipelines.spec import PipelineSpec
from omnijobs.store.records import JobView


def _event(data: dict | str) -> bytes:
    return format_sse_event(data_str=data if isinstance(data, str) else json.dumps(data, separators=(",", ":")))


async def text_stream(request: Request, job: JobView, spec: PipelineSpec, stage: str, kind: str,
                      delta: Callable[[str | None, bool], dict], include_usage: bool) -> AsyncIterator[bytes]:
    """`delta(text, first)` shapes one choice's new text: chat's `delta` object or a completion's `text`."""
    from api.openai.chat import finish_reason, usage_of
    from api.openai.jobs import cancel_in_background, created

    chat = kind == "chat.completion.chunk"
    base = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{job.id}", "object": kind, "created": created(job),
            "model": spec.name}

    def chunk(text: str | None, first: bool = False, reason: str | None = None) -> bytes:
        choice = {"index": 0, **delta(text, first), "finish_reason": reason, "logprobs": None}
        return _event({**base, "choices": [choice], **({"usage": None} if include_usage else {})})

    ended = False
    sent = ""
    try:
        if chat:
            yield chunk("", first=True)
        async for event in request.app.state.follower.follow(str(job.id)):
            if event.type == "delta" and event.data.get("stage") == stage and event.data.get("text"):
                sent += event.data["text"]
                yield chunk(event.data["text"])
            elif event.type in ("status", "stage"):
                yield format_sse_event(comment=f"{event.type} {event.data.get('status', '')}")  # keeps proxies open
            elif event.type == "end":
                final = event.job
                if final.status != "succeeded":
                    ended = True
                    message = (final.error or {}).get("message") if isinstance(final.error, dict) else None
                    yield _event({"error": {"message": f"job {final.id} {final.status}"
                                            + (f": {message}" if message else ""), "type": "server_error",
                                            "param": None, "code": f"job_{final.status}"}})
                    return
                text = (final.outputs or {}).get("text") or ""
                if text != sent and text.startswith(sent):  # what the channel did not carry (none in dev mode)
                    yield chunk(text[len(sent):])
                yield chunk(None, reason=finish_reason(final, stage)) if chat else chunk("", reason=finish_reason(
                    final, stage))
                if include_usage:
                    yield _event({**base, "choices": [], "usage": usage_of(final, stage)})
                ended = True
                yield _event("[DONE]")
                return
    finally:
        if not ended:  # the client left before the end: nobody reads this answer
            cancel_in_background(request, str(job.id))
