"""Streamed speech: time to first audio and end-to-end time of Qwen3-Omni jobs with the talker → code2wav edge streamed vs not.

Both sides run in one stack, back to back in every repeat: `qwen3_omni` as shipped (the talker
reads the thinker's states as they are written, code2wav reads the talker's codes as they are
generated and sends each decoded piece as an `audio` event) and `qwen3_omni_whole`, the same file
with its `streams:` lines removed (each stage starts once the one before it has ended). Each job is submitted and followed by its own SSE client on
`/v1/jobs/{id}/events`, the way a voice client listens; every time is that client's, from just
before its submit:

- time to first audio: the first `audio` event (streamed), or, without streaming, the moment the
  client holds the WAV (the `end` event, then the download of the job's audio output);
- end-to-end: the `end` event;
- the streamed audio's real-time behaviour: a player that starts with the first chunk and plays
  at the sample rate stalls whenever a chunk arrives after the one before it has finished playing.
  Every such gap is counted, and how long the player waited in all.

At concurrency 1 jobs run one after another; at 16, 16 jobs are submitted at once. Every streamed
job's chunks are checked to join to exactly its stored WAV.

    .venv/bin/python -m loadtest.streamed_audio [--repeats 3] [--concurrency 1,16] [--talker-codes 100]

`--pipeline qwen2_5_omni` measures Qwen2.5-Omni the same way (both of its hand-offs stream too).
Its codes are 20 ms of audio each, so by default it speaks 400 of them, as long as Qwen3-Omni's
100 (8 s): the first audio costs about the same whatever the reply's length, so its ratio to the
end-to-end time shrinks with longer replies, and both pipelines are measured on the same length.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import shutil
import statistics
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

from httpx_sse import aconnect_sse

from loadtest.report import Table, common_args, machine, percentile
from loadtest.stack import PIPELINES, Stack

STREAMED, WHOLE = "qwen3_omni", "qwen3_omni_whole"
STAGES = ("thinker", "talker", "code2wav")
# The pipelines measured (--pipeline): their stages, the last one streamed from the talker.
MEASURED = {"qwen3_omni": ("thinker", "talker", "code2wav"), "qwen2_5_omni": ("thinker", "talker", "token2wav")}
# Codec frames a job speaks by default: 8 s of audio in both families (80 ms a frame in Qwen3-Omni,
# 20 ms in Qwen2.5-Omni), so their ratios are measured on replies of the same length.
DEFAULT_CODES = {"qwen3_omni": 100, "qwen2_5_omni": 400}


def whole_pipeline(folder: Path) -> None:
    """The pipeline's file under another name with its `streams:` lines removed: each stage waits for the one before."""
    from omnijobs.pipelines.registry import BUILTIN_DIR

    text = (BUILTIN_DIR / f"{STREAMED}.yaml").read_text()
    text, names = re.subn(rf"^name: {STREAMED}$", f"name: {WHOLE}", text, flags=re.M)
    text, streams = re.subn(r"^\s+streams:.*\n", "", text, flags=re.M)
    if names != 1 or streams < 1:
        raise RuntimeError(f"{STREAMED}.yaml changed shape: {names} name line(s), {streams} streams line(s)")
    (folder / f"{WHOLE}.yaml").write_text(text)


@dataclass
class Listened:
    """What one client saw of one job, in seconds since just before its submit."""

    started: float
    first_audio: float | None = None
    end: float | None = None
    wav_held: float | None = None
    chunks: list[tuple[float, int, int, int]] = field(default_factory=list)  # (arrival, offset, samples, rate)
    pcm: bytearray = field(default_factory=bytearray)
    restarts: int = 0
    job: dict | None = None

    def playback(self) -> tuple[int, float, float]:
        """(gaps, seconds stalled, audio seconds) of a player starting at the first chunk."""
        gaps, stalled, playing_until = 0, 0.0, None
        for arrival, _offset, samples, rate in self.chunks:
            if playing_until is not None and arrival > playing_until:
                gaps += 1
                stalled += arrival - playing_until
            start = arrival if playing_until is None else max(arrival, playing_until)
            playing_until = start + samples / rate
        audio = sum(c[2] / c[3] for c in self.chunks)
        return gaps, stalled, audio


def body(pipeline: str, seed: int, thinker_tokens: int, talker_codes: int) -> dict:
    return {"pipeline": pipeline, "inputs": {"prompt": f"Tell me something about item number {seed}."},
            "params": {"seed": seed, "thinker": {"max_tokens": thinker_tokens},
                       "talker": {"max_tokens": talker_codes, "min_tokens": talker_codes}}}


async def listen(client, payload: dict) -> Listened:
    """Submit one job and follow its events to the end, as a voice client would."""
    t0 = time.perf_counter()
    seen = Listened(started=t0)
    r = await client.post("/v1/jobs", json=payload)
    if r.status_code != 202:
        raise RuntimeError(f"submit answered {r.status_code}: {r.text[:500]}")
    job_id = r.json()["id"]
    async with aconnect_sse(client, "GET", f"/v1/jobs/{job_id}/events", timeout=None) as source:
        async for event in source.aiter_sse():
            now = time.perf_counter() - t0
            if event.event == "restart":  # a new attempt: what was heard is dropped, it comes again
                seen.restarts += 1
                seen.chunks, seen.pcm = [], bytearray()
            elif event.event == "audio":
                data = event.json()
                if data["offset"] != len(seen.pcm) // 2:
                    raise RuntimeError(f"job {job_id}: chunk at sample {data['offset']}, expected {len(seen.pcm) // 2}")
                if seen.first_audio is None:
                    seen.first_audio = now
                seen.chunks.append((now, data["offset"], data["samples"], data["rate"]))
                seen.pcm += base64.b64decode(data["audio"])
            elif event.event == "end":
                seen.end = now
                seen.job = event.json()
                break
    if seen.job is None or seen.job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} did not succeed: {str(seen.job)[:1500]}")
    wav = await client.get(f"/v1/jobs/{job_id}/outputs/audio")
    seen.wav_held = time.perf_counter() - t0
    if wav.status_code != 200:
        raise RuntimeError(f"job {job_id}: audio output answered {wav.status_code}")
    with wave.open(io.BytesIO(wav.content)) as w:
        stored = w.readframes(w.getnframes())
    if seen.chunks and bytes(seen.pcm) != stored:
        raise RuntimeError(f"job {job_id}: the streamed chunks ({len(seen.pcm)} bytes) are not the stored WAV "
                           f"({len(stored)} bytes)")
    return seen


def side(stack: Stack, pipeline: str, concurrency: int, jobs: int, seed0: int, sizes: tuple[int, int]) -> dict:
    """`jobs` jobs, `concurrency` at a time (each wave submitted at once); per-job times and the burst's rate."""

    async def go() -> list[Listened]:
        async with stack.async_client(2 * concurrency + 2) as client:
            out: list[Listened] = []
            for wave_start in range(0, jobs, concurrency):
                n = min(concurrency, jobs - wave_start)
                out += await asyncio.gather(*(listen(client, body(pipeline, seed0 + wave_start + k, *sizes))
                                              for k in range(n)))
            return out

    workers = [f"{pipeline}.{s}" for s in STAGES]
    cpu0 = stack.cpu_s()
    began = time.perf_counter()
    seen = asyncio.run(go())
    cpu1 = stack.cpu_s()
    cpu = {w.rpartition(".")[2]: (cpu1[w] - cpu0[w]) / len(seen) for w in workers}
    wall = max(s.started + s.end for s in seen) - began
    streamed = pipeline == STREAMED
    if streamed and any(not s.chunks for s in seen):
        raise RuntimeError("a streamed job sent no audio events")
    if not streamed and any(s.chunks for s in seen):
        raise RuntimeError("a job of the unstreamed pipeline sent audio events")
    ttfp = [s.first_audio if streamed else s.wav_held for s in seen]
    plays = [s.playback() for s in seen] if streamed else []
    audio = [p[2] for p in plays]
    last = [s.chunks[-1][0] for s in seen] if streamed else []
    return {"ttfp": statistics.median(ttfp), "ttfp_p99": percentile(ttfp, 0.99),
            "e2e": statistics.median(s.end for s in seen), "e2e_p99": percentile([s.end for s in seen], 0.99),
            "jobs_per_s": len(seen) / wall, "restarts": sum(s.restarts for s in seen),
            "gaps": sum(p[0] for p in plays), "jobs_with_gaps": sum(1 for p in plays if p[0]),
            "stalled": sum(p[1] for p in plays),
            # Submit to last chunk over the audio's length: under 1, the audio is made faster than it plays.
            "rtf": statistics.median(t / a for t, a in zip(last, audio, strict=True)) if streamed else None,
            "chunks": statistics.median(len(s.chunks) for s in seen) if streamed else None,
            "audio_s": statistics.median(audio) if streamed else None,
            "cpu": cpu, "load": os.getloadavg()[0]}


def table(concurrency: int, jobs: int, whole: list[dict], streamed: list[dict], repeats: int,
          sizes: tuple[int, int]) -> Table:
    t = Table(f"Streamed speech, concurrency {concurrency}: {jobs} `{STREAMED}` jobs, {concurrency} at a time "
              f"(thinker {sizes[0]} tokens, talker {sizes[1]} codes; {repeats} repeat(s))",
              f"not streamed: {STAGES[-1]} after the talker")
    t.add("time to first audio, p50 (s)", [w["ttfp"] for w in whole], [s["ttfp"] for s in streamed], 3)
    t.add("time to first audio, p99 (s)", [w["ttfp_p99"] for w in whole], [s["ttfp_p99"] for s in streamed], 3)
    t.add("first audio (streamed) / end-to-end (not streamed), p50", [w["e2e"] for w in whole],
          [s["ttfp"] for s in streamed], 3)
    t.add("end-to-end, p50 (s)", [w["e2e"] for w in whole], [s["e2e"] for s in streamed], 3)
    t.add("end-to-end, p99 (s)", [w["e2e_p99"] for w in whole], [s["e2e_p99"] for s in streamed], 3)
    t.add("throughput (jobs/s)", [w["jobs_per_s"] for w in whole], [s["jobs_per_s"] for s in streamed], 3)
    for name in STAGES:
        t.add(f"{name} worker CPU per job (s)", [w["cpu"][name] for w in whole], [s["cpu"][name] for s in streamed], 3)
    t.add("streamed: audio chunks per job, p50", None, [s["chunks"] for s in streamed], 1, ratio=False)
    t.add("streamed: audio seconds per job, p50", None, [s["audio_s"] for s in streamed], 2, ratio=False)
    t.add("streamed: real-time factor (submit → last chunk / audio s), p50", None,
          [s["rtf"] for s in streamed], 3, ratio=False)
    t.add("streamed: playback gaps (chunk after the previous ended), all jobs", None,
          [float(s["gaps"]) for s in streamed], 0, ratio=False)
    t.add("streamed: jobs with a gap", None, [float(s["jobs_with_gaps"]) for s in streamed], 0, ratio=False)
    t.add("streamed: seconds a player waited in gaps, all jobs", None, [s["stalled"] for s in streamed], 3,
          ratio=False)
    t.add("stream restarts seen (both sides)", None, [float(w["restarts"] + s["restarts"])
                                                      for w, s in zip(whole, streamed, strict=True)], 0, ratio=False)
    t.add("1-min load average after the side ran", [w["load"] for w in whole], [s["load"] for s in streamed], 2,
          ratio=False)
    return t


def main() -> None:
    parser = common_args(__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,16", help="comma-separated client concurrencies")
    parser.add_argument("--jobs", type=int, default=0,
                        help="jobs per side and concurrency (default: 3 at concurrency 1, else the concurrency)")
    parser.add_argument("--thinker-tokens", type=int, default=16)
    parser.add_argument("--talker-codes", type=int, default=0,
                        help="codec frames per job (80 ms of audio each for qwen3_omni, 20 ms for qwen2_5_omni; "
                             "default: 8 s of audio, 100 and 400)")
    parser.add_argument("--models", type=Path, default=None, help="OMNIJOBS_MODELS_DIR (default: the settings')")
    parser.add_argument("--pipeline", default="qwen3_omni", choices=sorted(MEASURED))
    args = parser.parse_args()
    global STREAMED, WHOLE, STAGES
    STREAMED, WHOLE, STAGES = args.pipeline, f"{args.pipeline}_whole", MEASURED[args.pipeline]
    print(machine())
    from omnijobs.engines.factory import resolve_model_path
    from omnijobs.models.tiny import build_tiny
    from omnijobs.pipelines import load_registry
    from omnijobs.settings import get_settings

    models = args.models or get_settings().models_dir
    if args.models is None:
        stages_dir = resolve_model_path(load_registry().get(STREAMED).stages["thinker"].model, models).parent
        build_tiny(models, only=[str(stages_dir.relative_to(models))])
    sizes = (args.thinker_tokens, args.talker_codes or DEFAULT_CODES[args.pipeline])
    levels = [int(c) for c in args.concurrency.split(",")]
    extra = Path(tempfile.mkdtemp(prefix="omnijobs-bench-pipelines-"))
    results: dict[int, dict[str, list[dict]]] = {c: {STREAMED: [], WHOLE: []} for c in levels}
    loads = [machine()]
    try:
        whole_pipeline(extra)
        env = {"OMNIJOBS_PIPELINES_PATH": os.pathsep.join((str(PIPELINES), str(extra)))}
        with Stack(models_dir=models, device=args.device, keep_logs=args.keep_logs, env=env) as stack:
            stack.start_workers([f"{p}.{s}" for p in (STREAMED, WHOLE) for s in STAGES])
            for pipeline in (STREAMED, WHOLE):  # warm-up: each worker's first batch
                side(stack, pipeline, 2, 2, 10_000, (4, 12))
            seed = 0
            for repeat in range(args.repeats):
                for c in levels:
                    jobs = args.jobs or (3 if c == 1 else c)
                    # Alternate which side goes first, so a drifting machine favours neither.
                    order = (STREAMED, WHOLE) if repeat % 2 == 0 else (WHOLE, STREAMED)
                    for pipeline in order:
                        results[c][pipeline].append(side(stack, pipeline, c, jobs, seed, sizes))
                    seed += jobs  # both sides speak the same prompts and seeds
                loads.append(machine())
    finally:
        shutil.rmtree(extra, ignore_errors=True)
    for c in levels:
        jobs = args.jobs or (3 if c == 1 else c)
        table(c, jobs, results[c][WHOLE], results[c][STREAMED], args.repeats, sizes).print(
            ["Every time is an SSE client's, from just before its submit; not streamed, the first audio is the "
             "WAV downloaded after the `end` event. One worker per stage and pipeline (OMNIJOBS_TORCH_THREADS=1) "
             "+ the API, all on this machine."] if c == levels[-1] else [])
    print("Machine load before the run and after each repeat:")
    for line in loads:
        print(f"- {line}")


if __name__ == "__main__":
    main()
