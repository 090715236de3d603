"""The body of a streamed /v1/audio/speech: WAV or PCM bytes as the job's audio is decoded.

The response starts with the first audio (so a job that fails before any is still an error in
OpenAI's shape); after that a failure can only end the body early, and it does so by breaking
the connection rather than ending it cleanly, so a client never takes part of a reply for all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import wave
from collections.abc import AsyncIterator

from fastapi import Request

from api.openai.errors import OpenAIError
from api.openai.jobs import cancel_in_background, ensure_succeeded, until_disconnected
from api.openai.media import output_file
from omnijobs.store.records import JobView
from omnijobs.streaming.audio_follow import AudioDiverged, AudioFollow, wav_header

log = logging.getLogger("omnijobs.api.openai")
MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm"}


def pcm_of(wav_bytes: bytes) -> tuple[int, bytes]:
    """(sample rate, 16-bit mono samples) of a stored WAV."""
    with wave.open(io.BytesIO(wav_bytes)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"stored audio is {w.getnchannels()} channel(s) of {8 * w.getsampwidth()} bits, "
                             "not 16-bit mono")
        return w.getframerate(), w.readframes(w.getnframes())


async def speech_body(request: Request, job: JobView, stage: str, fmt: str) -> AsyncIterator[bytes]:
    """The job's audio as it comes: `stage`'s audio events, then what the stored WAV adds."""
    audio = AudioFollow(stage)
    started = ended = False

    def frame(new: bytes, rate: int, total: int | None = None) -> bytes:
        nonlocal started
        head = b"" if started or fmt != "wav" else wav_header(rate, total)
        started = True
        return head + new

    try:
        async for event in request.app.state.follower.follow(str(job.id)):
            if event.type in ("audio", "restart"):
                new = audio.event(event.type, event.data)
                if new:
                    yield frame(new, audio.rate)
            elif event.type == "end":
                ended = True
                done = ensure_succeeded(event.job) if not started else event.job
                if done.status != "succeeded":
                    raise AudioDiverged(f"job {done.id} {done.status} after {len(audio.sent) // 2} samples were sent")
                rate, pcm = pcm_of((await output_file(request, done, "audio")).data)
                if started and audio.rate not in (None, rate):
                    raise AudioDiverged(f"stored audio is {rate} Hz, the stream was {audio.rate} Hz")
                rest = audio.final(pcm)
                # Nothing streamed (a pipeline that does not stream its audio): the WAV's true length is known.
                yield frame(rest, rate, None if started else len(pcm))
                return
    except AudioDiverged as exc:
        log.warning("speech stream of job %s broken off: %s", job.id, exc)
        raise
    finally:
        if not ended:  # the client left before the end: nobody hears this reply
            cancel_in_background(request, str(job.id))


async def first_then_rest(request: Request, job: JobView, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Wait for the body's first bytes before answering (errors before them are proper responses).

    A client that leaves meanwhile cancels the job, as a waiting one does; so does a wait past `openai_wait_s`.
    """
    first = asyncio.ensure_future(anext(body))
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({first, watcher}, timeout=request.app.state.settings.openai_wait_s,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if not first.done():
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await first
        await body.aclose()
        # Closing the body cancels the job: a stream nobody reads is not worth finishing.
        raise OpenAIError(504, f"job {job.id} sent no audio within {request.app.state.settings.openai_wait_s:g} s "
                               "and was canceled", "timeout", str(job.id))
    try:
        head = first.result()
    except StopAsyncIteration:
        head = b""

    async def rest() -> AsyncIterator[bytes]:
        if head:
            yield head
        async for piece in body:
            yield piece
    return rest()
