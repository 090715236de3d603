"""Rows/s of each shipped stage's engine at several batch sizes, in one process, on the tiny models.

This is the measurement behind the `batch: {max_size: ...}` of each stage in the builtin pipelines:
engines are called in-process (no queue, no database), so the figures are the engine's own
batching gain. Each stage is fed what its upstream stages really produce for the same jobs.

    .venv/bin/python loadtest/stage_throughput.py --models ~/.cache/omnijobs/models \
        --pipelines qwen2_5_omni,qwen3_omni --sizes 1,4,8,16,32 --rows 32

`--profile STAGE` (e.g. `qwen2_5_omni.token2wav`) prints a cProfile of one batch at the largest size.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time
from pathlib import Path
from typing import Any

# The omni burst of the performance benchmark: thinker 32 tokens, talker 64 codes, 10 DiT steps.
OVERRIDES: dict[str, dict[str, Any]] = {
    "qwen2_5_omni.thinker": {"max_tokens": 32, "ignore_eos": True},
    "qwen2_5_omni.talker": {"max_tokens": 64, "min_tokens": 64},
    "qwen3_omni.thinker": {"max_tokens": 32, "ignore_eos": True},
    "qwen3_omni.talker": {"max_tokens": 32, "min_tokens": 32},
    "chat.generate": {"max_tokens": 32, "ignore_eos": True},
}


def _png(seed: int):
    import numpy as np
    from PIL import Image

    from omnijobs.engines.base import Media

    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "PNG")
    return Media(buf.getvalue(), "image/png")


def job_inputs(pipeline, i: int) -> dict[str, Any]:
    values = {}
    for name, spec in pipeline.inputs.items():
        if spec.type == "text" and spec.required:
            values[name] = f"request {i}: tell me about " + "the sea and the sky " * (1 + i % 4)
        elif spec.type == "image" and spec.required:
            values[name] = _png(i)
        elif spec.default is not None:
            values[name] = spec.default
    return values


def stage_rows(pipeline, stage, upstream: dict[str, list[dict]], jobs: list[dict]):
    from omnijobs.engines.base import StageRequest

    params = {**stage.default_params(), **OVERRIDES.get(f"{pipeline.name}.{stage.name}", {})}
    rows = []
    for i, job in enumerate(jobs):
        inputs = {}
        for port, ref in stage.inputs.items():
            source, _, name = ref.partition(".")
            value = job.get(name) if source == "job" else upstream[source][i].get(name)
            if value is not None:
                inputs[port] = value
        rows.append(StageRequest(f"{stage.name}-{i}", inputs, {**params, "seed": i}))
    return rows


def timed(engine, rows, size: int) -> float:
    """Rows per CPU-second of this process: what a one-thread worker does with a core to itself,
    and far steadier than wall time on a shared machine."""
    started = time.process_time()
    for k in range(0, len(rows), size):
        for result in engine.run(rows[k : k + size]):
            if isinstance(result, BaseException):
                raise result
    return len(rows) / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, default=Path("~/.cache/omnijobs/models").expanduser())
    parser.add_argument("--pipelines", default="qwen2_5_omni,qwen3_omni")
    parser.add_argument("--stages", default="", help="only these stages (pipeline.stage,...)")
    parser.add_argument("--sizes", default="1,4,8,16,32")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--profile", default="", help="pipeline.stage to profile at the largest size")
    args = parser.parse_args()

    from omnijobs.engines.torch_runtime import configure_threads

    configure_threads(1)  # as a stage worker runs
    from omnijobs.engines.factory import create_engine
    from omnijobs.models.tiny import build_tiny
    from omnijobs.pipelines import load_registry

    build_tiny(args.models)
    registry = load_registry()
    sizes = [int(s) for s in args.sizes.split(",")]
    only = set(filter(None, args.stages.split(",")))
    print(f"{'stage':<32} " + " ".join(f"{'b' + str(s):>8}" for s in sizes) + "   best  (rows per CPU-second; ratio to b1)")
    for name in args.pipelines.split(","):
        pipeline = registry.get(name)
        jobs = [job_inputs(pipeline, i) for i in range(args.rows)]
        outputs: dict[str, list[dict]] = {}
        for stage in pipeline.stages.values():
            key = f"{name}.{stage.name}"
            engine = create_engine(stage, "cpu", args.models)
            engine.load()
            rows = stage_rows(pipeline, stage, outputs, jobs)
            engine.run(rows[:2])  # warm-up
            wanted = not only or key in only
            rates = []
            for size in sizes if wanted else []:
                runs = [timed(engine, rows, size) for _ in range(args.repeats)]
                rates.append(statistics.median(runs))
            if rates:
                best = sizes[rates.index(max(rates))]
                cells = " ".join(f"{r:>8.2f}" for r in rates)
                print(f"{key:<32} {cells}   b{best} ({max(rates) / rates[0]:.2f}x)", flush=True)
            if args.profile == key:
                profiler = cProfile.Profile()
                profiler.enable()
                engine.run(rows[: sizes[-1]])
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
                print(out.getvalue())
            # Downstream stages take this stage's real outputs, batched the way the worker would.
            results = []
            for k in range(0, len(rows), 8):
                results.extend(engine.run(rows[k : k + 8]))
            outputs[stage.name] = [r if isinstance(r, dict) else {} for r in results]
            del engine


if __name__ == "__main__":
    main()
