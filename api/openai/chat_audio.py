"""A streamed chat with audio output: OpenAI chunks whose `delta.audio` carries transcript and PCM16.

The transcript is the text stage's deltas; the audio is the audio stage's `audio` events as they
are decoded, or, where the pipeline does not stream its audio, the stored WAV's samples once the
job ends. Either way the transcripts join to the stored text and the data to the stored WAV's frames.

NOTE: on a `restart` (an audio stage's attempt died) the audio already sent cannot be taken back:
OpenAI's chunks have no way to say "discard". Holding the audio until the job ends would be safe
but would stream nothing, so the audio goes out as it comes and a new attempt's audio is passed on
only while it repeats, sample for sample, what the client already holds (a retried decoder of the
same codes does). Where it differs, the stream ends with an error event (`audio_restarted`) instead
of splicing two attempts; the job goes on and its whole WAV stays at `/v1/jobs/{id}/outputs/audio`.
The transcript follows the same rule against the stored text.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.sse import format_sse_event

from api.openai.jobs import cancel_in_background, created
from api.openai.media import output_file
from api.openai.speech_stream import pcm_of
from omnijobs.pipelines.spec import PipelineSpec
from omnijobs.store.records import JobView
from omnijobs.streaming.audio_follow import AudioDiverged, AudioFollow

log = logging.getLogger("omnijobs.api.openai")
# Bytes of PCM per delta at most (even: whole samples), so a stored WAV sent at the end is many
# small events a player can start on, not one of megabytes.
PIECE_BYTES = 1 << 16
EXPIRES_S = 24 * 3600  # as the unstreamed reply says; the WAV stays downloadable from the job for longer


def _event(data: dict | str) -> bytes:
    return format_sse_event(data_str=data if isinstance(data, str) else json.dumps(data, separators=(",", ":")))


def pieces(pcm: bytes) -> list[bytes]:
    return [pcm[i:i + PIECE_BYTES] for i in range(0, len(pcm), PIECE_BYTES)]


async def audio_chat_stream(request: Request, job: JobView, spec: PipelineSpec, text_stage: str, audio_stage: str,
                            include_usage: bool) -> AsyncIterator[bytes]:
    from api.openai.chat import finish_reason, usage_of

    base = {"id": f"chatcmpl-{job.id}", "object": "chat.completion.chunk", "created": created(job),
            "model": spec.name}
    audio_id, expires_at = f"audio-{job.id}", int(time.time()) + EXPIRES_S
    opened = False

    def chunk(delta: dict, reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        return _event({**base, "choices": [choice], **({"usage": None} if include_usage else {})})

    def audio(**fields: str) -> bytes:
        nonlocal opened
        head = {} if opened else {"id": audio_id, "expires_at": expires_at}  # the first audio delta names it
        opened = True
        return chunk({"audio": {**head, **fields}})

    def error(message: str, code: str) -> bytes:
        return _event({"error": {"message": message, "type": "server_error", "param": None, "code": code}})

    follow = AudioFollow(audio_stage)
    sent_text = ""
    ended = False
    try:
        yield chunk({"role": "assistant", "content": None})
        async for event in request.app.state.follower.follow(str(job.id)):
            if event.type == "delta" and event.data.get("stage") == text_stage and event.data.get("text"):
                sent_text += event.data["text"]
                yield audio(transcript=event.data["text"])
            elif event.type in ("audio", "restart"):
                for piece in pieces(follow.event(event.type, event.data)):
                    yield audio(data=base64.b64encode(piece).decode())
            elif event.type in ("status", "stage"):
                yield format_sse_event(comment=f"{event.type} {event.data.get('status', '')}")  # keeps proxies open
            elif event.type == "end":
                final = event.job
                ended = True
                if final.status != "succeeded":
                    message = (final.error or {}).get("message") if isinstance(final.error, dict) else None
                    yield error(f"job {final.id} {final.status}" + (f": {message}" if message else ""),
                                f"job_{final.status}")
                    return
                text = (final.outputs or {}).get("text") or ""
                if not text.startswith(sent_text):
                    raise AudioDiverged("the stored text does not start with the transcript already sent")
                if text != sent_text:  # what the channel did not carry (all of it without a channel)
                    yield audio(transcript=text[len(sent_text):])
                rate, pcm = pcm_of((await output_file(request, final, "audio")).data)
                if follow.rate not in (None, rate):
                    raise AudioDiverged(f"stored audio is {rate} Hz, the stream was {follow.rate} Hz")
                for piece in pieces(follow.final(pcm)):
                    yield audio(data=base64.b64encode(piece).decode())
                # The last audio update holds only the expiry, as OpenAI ends one (or names the audio, if
                # nothing else did).
                yield chunk({"audio": {"expires_at": expires_at}}) if opened else audio()
                yield chunk({}, reason=finish_reason(final, text_stage))
                if include_usage:
                    yield _event({**base, "choices": [], "usage": usage_of(final, text_stage)})
                yield _event("[DONE]")
                return
    except AudioDiverged as exc:
        # The job is not canceled: its result is still good, only this stream cannot carry it.
        ended = True
        log.warning("chat audio stream of job %s ended: %s", job.id, exc)
        yield error(f"the reply restarted after part of it was sent ({exc}); discard what this stream gave: "
                    f"the whole reply will be at /v1/jobs/{job.id} once the job ends", "audio_restarted")
    finally:
        if not ended:  # the client left before the end: nobody reads this answer
            cancel_in_background(request, str(job.id))
