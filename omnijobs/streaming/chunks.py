"""Chunks on a streamed edge: the upstream stage writes them while it generates, the downstream reads.

One Redis stream per job and edge (`omnijobs:job:{job}:edge:{stage}.{port}`). Every entry carries
the writer's attempt number and its sequence number within that attempt; the last entry of an
attempt is marked `end`. Attempt numbers come from a counter beside the stream, taken when an
attempt writes its first chunk, so a retried upstream always writes under a higher number than any
earlier attempt, and a reader that sees a higher number than the one it follows knows the stream
restarted: it drops what it had and starts over from that attempt's first chunk.

Payloads are arrays (codec frames: a few small ints per frame), stored inline as raw bytes with
their dtype and shape, or named bundles of tensors (a thinker's prompt states), stored as
safetensors. A chunk larger than `MAX_INLINE` goes through the artifact connector's transit store
(the entry holds its URI; it is freed with the job's other intermediates). Streams expire `ttl_s`
after their first write, and soon (`ended_ttl_s`) after their reader is done, so nothing grows
without bound.

Without Redis (dev mode's file-system broker) there is no transport: workers and the reconciler
load the pipelines with their streamed edges made plain (`where_streams_run`), so the downstream
stage waits for the upstream's recorded output as before; an engine that still gets a streamed
input without a transport fails with a message saying so.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omnijobs.pipelines.spec import PipelineSpec, StreamSpec
from omnijobs.streaming.channel import ChannelConfig, channel_key, encode

log = logging.getLogger("omnijobs.streaming")

MAX_INLINE = 1 << 20
TENSORS = "safetensors"
# Channel event types written by downstream engines (read by JobFollower like deltas).
AUDIO, RESTART = "audio", "restart"


def edge_key(job_id: str, stage: str, port: str) -> str:
    return f"omnijobs:job:{job_id}:edge:{stage}.{port}"


def encode_payload(payload: Any) -> dict[str, bytes | str]:
    """An entry's payload fields: a dict of tensors as safetensors, anything else as one array."""
    if isinstance(payload, dict):
        from omnijobs.artifacts.tensors import tensors_to_bytes

        return {"format": TENSORS, "data": tensors_to_bytes(payload)}
    array = np.ascontiguousarray(payload.detach().cpu().numpy() if hasattr(payload, "detach") else np.asarray(payload))
    return {"dtype": array.dtype.str, "shape": ",".join(map(str, array.shape)), "data": array.tobytes()}


def decode_payload(fields: dict[bytes, bytes], data: bytes | None = None) -> Any:
    """The payload of an entry (its bytes read from the artifact store when `data` is given)."""
    data = fields[b"data"] if data is None else data
    if _text(fields.get(b"format", b"")) == TENSORS:
        from omnijobs.artifacts.tensors import bytes_to_tensors

        return bytes_to_tensors(data)
    shape = tuple(int(n) for n in _text(fields[b"shape"]).split(",") if n)
    return np.frombuffer(data, dtype=np.dtype(_text(fields[b"dtype"]))).reshape(shape).copy()


@dataclass
class EdgeStream:
    """What a reader has of one job's edge: the attempt it follows and that attempt's chunks so far."""

    job_id: str
    key: str
    attempt: int = 0
    cursor: str = "0-0"
    chunks: list[np.ndarray] = field(default_factory=list)
    ended: bool = False
    # Set when a newer attempt replaced what was read (the consumer must drop its decoded output).
    restarted: bool = False
    # Why the stream cannot be followed any more (chunks of the attempt went missing), or "".
    lost: str = ""

    def _restart(self, attempt: int) -> None:
        self.attempt, self.chunks, self.ended, self.restarted = attempt, [], False, True


class ChunkStreams:
    """Writer and reader of a stage's streamed edges, plus the audio/restart events of its jobs."""

    def __init__(self, config: ChannelConfig, spec: PipelineSpec | None = None, stage: str = "", client=None,
                 values=None):
        import redis

        self.config = config
        self.stage = stage
        # The artifact stores (StageValues) that carry chunks over MAX_INLINE; None: such chunks are refused.
        self.values = values
        self.redis = client or redis.Redis.from_url(config.redis_url, socket_timeout=30, socket_connect_timeout=5)
        # This stage's output ports that a downstream stage reads as a stream, with that stream's spec.
        self.outgoing: dict[str, StreamSpec] = outgoing_streams(spec, stage) if spec is not None else {}
        # (request identity, port) -> (request, attempt, next seq): one attempt number per run per batch.
        self._writing: OrderedDict[tuple[int, str], tuple[Any, int, int]] = OrderedDict()

    # ------------------------------------------------------------------ writer

    def emit(self, request, port: str, payload: Any, final: bool = False) -> None:
        """Append one chunk of `request`'s output on `port` (None payload: only the end mark)."""
        self.emit_many([(request, port, payload, final)])

    def emit_many(self, rows: Sequence[tuple[Any, str, Any, bool]]) -> None:
        """Several rows' chunks in one round trip: (request, port, payload or None, final)."""
        rows = [r for r in rows if r[1] in self.outgoing]
        if not rows:
            return
        # Encoded (and large ones stored) first: a chunk that cannot be written must not advance any
        # row's sequence, or its readers would find a gap.
        fields = [None if r[2] is None else self._large(r[0], r[1], encode_payload(r[2])) for r in rows]
        # One attempt number per row and port, however many of its chunks this call carries.
        fresh = list({(id(r[0]), r[1]): (r[0], r[1]) for r in rows if (id(r[0]), r[1]) not in self._writing}.values())
        if fresh:
            pipe = self.redis.pipeline(transaction=False)
            for req, port in fresh:
                pipe.incr(edge_key(req.job_id, self.stage, port) + ":attempts")
            for (req, port), attempt in zip(fresh, pipe.execute(), strict=True):
                self._writing[(id(req), port)] = (req, int(attempt), 0)
            while len(self._writing) > 4096:  # rows of batches that died before their end mark
                self._writing.popitem(last=False)
        # NOTE: one transaction, so a reader blocked on these streams wakes to all of the step's
        # chunks at once and decodes them in one call, not the first row's alone.
        pipe = self.redis.pipeline(transaction=True)
        for (req, port, _, final), payload in zip(rows, fields, strict=True):
            slot = (id(req), port)
            _, attempt, seq = self._writing[slot]
            entry: dict[str, Any] = {"attempt": attempt, "seq": seq, "end": int(final)}
            if payload is not None:
                entry.update(payload)
            key = edge_key(req.job_id, self.stage, port)
            pipe.xadd(key, entry)
            # NOTE: only a stream without an expiry gets one: a reader that is done (or a canceled
            # job's) has set a short one, which a late end mark must not stretch back to ttl_s.
            pipe.expire(key, self.config.ttl_s, nx=True)
            pipe.expire(key + ":attempts", self.config.ttl_s, nx=True)
            if final:
                del self._writing[slot]
            else:
                self._writing[slot] = (req, attempt, seq + 1)
        pipe.execute()

    def restart(self, request, port: str) -> None:
        """The next chunk of `request` on `port` starts a new attempt (its readers drop what they had)."""
        self._writing.pop((id(request), port), None)

    def _large(self, req, port: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Fields of a chunk over MAX_INLINE: its bytes in the transit store, the entry holds the URI."""
        data = fields["data"]
        if len(data) <= MAX_INLINE:
            return fields
        if self.values is None:
            raise ValueError(f"a stream chunk of {len(data)} bytes exceeds the inline limit of {MAX_INLINE} "
                             "and this stage has no artifact store for it")
        from omnijobs.artifacts.base import chunk_key

        transit = self.values.transit
        uri = transit.put(chunk_key(req.job_id, self.stage, port), data)
        out = {k: v for k, v in fields.items() if k != "data"}
        out["ref"] = uri
        if transit.scheme == "shm":
            out["host"] = self.values.host
        return out

    # ------------------------------------------------------------------ reader

    def open(self, job_id: str, ref: str) -> EdgeStream:
        """Start following the edge `ref` ("stage.port") of a job at its newest attempt.

        A reader that is not the edge's first (the downstream run is a retry) tells the job's
        listeners to drop the audio they got: it is about to be sent again from the start.
        """
        stage, _, port = ref.partition(".")
        key = edge_key(job_id, stage, port)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xrevrange(key, "+", "-", count=1)
        pipe.incr(key + ":readers")
        pipe.expire(key + ":readers", self.config.ttl_s)
        last, readers, _ = pipe.execute()
        edge = EdgeStream(job_id, key, attempt=int(last[0][1][b"attempt"]) if last else 0)
        edge.restarted = int(readers) > 1
        return edge

    def read(self, edges: Sequence[EdgeStream], block_ms: int) -> None:
        """Advance every open edge with what its stream holds, waiting up to `block_ms` for anything."""
        live = [e for e in edges if not e.ended and not e.lost]
        if not live:
            return
        by_key = {e.key: e for e in live}
        # block_ms <= 0: answer at once with what is there.
        reply = self.redis.xread({e.key: e.cursor for e in live}, count=1024,
                                 block=block_ms if block_ms > 0 else None) or []
        if reply and len(live) > 1:
            # NOTE: a blocked read wakes with the one stream that got an entry; the others written
            # in the same transaction are there too, and are taken now so they decode together.
            woke = {_text(key) for key, _ in reply}
            rest = {e.key: e.cursor for e in live if e.key not in woke}
            if rest:
                reply += self.redis.xread(rest, count=1024) or []
        for key, entries in reply:
            edge = by_key[_text(key)]
            for entry_id, fields in entries:
                edge.cursor = _text(entry_id)
                try:
                    _apply(edge, fields, self._fetch)
                except LookupError as exc:  # this edge alone is broken: its reader fails that row
                    edge.lost = str(exc)
                    break

    def _fetch(self, fields: dict[bytes, bytes]) -> bytes:
        """The bytes of a chunk held in the artifact store."""
        uri = _text(fields[b"ref"])
        host = _text(fields.get(b"host", b""))
        if self.values is None:
            raise LookupError(f"stream chunk {uri} is in the artifact store, which this stage has none of")
        if host and host != self.values.host:
            raise LookupError(f"stream chunk {uri} is in shared memory on host {host}, which this worker "
                              f"({self.values.host}) cannot read; stages on several hosts need OMNIJOBS_ARTIFACTS=s3")
        try:
            return self.values.reader(uri).get(uri)
        except FileNotFoundError as exc:
            raise LookupError(f"stream chunk {uri} is gone from the artifact store") from exc

    def done(self, edges: Iterable[EdgeStream]) -> None:
        """The reader is finished with these edges: let them expire soon."""
        pipe = self.redis.pipeline(transaction=False)
        for e in edges:
            for key in (e.key, e.key + ":attempts", e.key + ":readers"):
                pipe.expire(key, self.config.ended_ttl_s)
        try:
            pipe.execute()
        except Exception:  # they expire on their own after ttl_s
            log.exception("could not shorten the life of %d stream(s)", len(list(edges)))

    # ------------------------------------------------------------------ events

    def publish(self, kind: str, rows: Sequence[tuple[Any, dict[str, Any]]]) -> None:
        """Events on the jobs' channels, one round trip: (request, data). Best effort, like deltas."""
        if not rows:
            return
        pipe = self.redis.pipeline(transaction=False)
        for req, data in rows:
            key = channel_key(req.job_id)
            pipe.xadd(key, encode(kind, {"stage": self.stage, "run_id": req.run_id, **data}),
                      maxlen=self.config.maxlen, approximate=True)
            pipe.expire(key, self.config.ttl_s)
        try:
            pipe.execute()
        except Exception as exc:  # NOTE: a live view; the recorded output is what counts
            log.warning("event channel unavailable, %s events dropped: %s", kind, exc)


def _apply(edge: EdgeStream, fields: dict, fetch) -> None:
    attempt, seq = int(fields[b"attempt"]), int(fields[b"seq"])
    if attempt < edge.attempt:
        return  # an older attempt's leftovers
    if attempt > edge.attempt and edge.attempt == 0:
        edge.attempt = attempt  # the first attempt this reader sees: nothing to drop
    elif attempt > edge.attempt:
        edge._restart(attempt)
    if seq != len(edge.chunks):
        if seq < len(edge.chunks):
            return
        raise LookupError(f"stream {edge.key} lost chunks of attempt {attempt} (got {seq}, "
                          f"expected {len(edge.chunks)})")
    if b"ref" in fields:
        edge.chunks.append(decode_payload(fields, fetch(fields)))
    else:
        edge.chunks.append(decode_payload(fields) if b"data" in fields else None)
    edge.ended = bool(int(fields[b"end"]))


def outgoing_streams(spec: PipelineSpec, stage: str) -> dict[str, StreamSpec]:
    """The output ports of `stage` that some stage reads as a stream (port -> its StreamSpec)."""
    out = {}
    for other in spec.stages.values():
        for port, stream in other.streams.items():
            head, _, tail = other.inputs[port].partition(".")
            if head == stage:
                out[tail] = stream
    return out


def chunk_streams(settings, spec: PipelineSpec, stage: str, values=None) -> ChunkStreams | None:
    """The stage's chunk transport for these settings (large chunks through `values`, the stage's
    StageValues); None without Redis (no streaming)."""
    config = ChannelConfig.from_settings(settings)
    if config.redis_url is None:
        return None
    return ChunkStreams(config, spec, stage, values=values)


def schedule(frames: int, stream: StreamSpec) -> list[int]:
    """Chunk boundaries over `frames` frames: first_chunk, then chunk each (the last may be short)."""
    bounds, at, size = [], 0, stream.first_chunk or stream.chunk
    while at < frames:
        at = min(frames, at + size)
        bounds.append(at)
        size = stream.chunk
    return bounds


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


def where_streams_run(settings, registry):
    """The registry as this deployment runs it: without Redis there is no chunk transport, so every
    streamed edge falls back to a plain one (the downstream stage waits for the recorded output).

    Every process that decides when a stage is ready (workers, reconciler) loads it this way, so
    they agree.
    """
    from omnijobs.pipelines.registry import PipelineRegistry

    if ChannelConfig.from_settings(settings).redis_url is not None:
        return registry
    return PipelineRegistry([
        spec.model_copy(update={"stages": {n: s.model_copy(update={"streams": {}}) for n, s in spec.stages.items()}})
        for spec in registry.all()])


def whole_chunks(sent: int, frames: int, stream: StreamSpec) -> list[tuple[int, int]]:
    """The whole chunks (start, end) a writer holding `frames` frames, `sent` of them sent, can send
    now: `first_chunk` frames first, then `chunk` each (the rest waits for more, or the end mark)."""
    out, size = [], (stream.first_chunk or stream.chunk) if sent == 0 else stream.chunk
    while frames - sent >= size:
        out.append((sent, sent + size))
        sent, size = sent + size, stream.chunk
    return out
