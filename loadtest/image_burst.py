"""Qwen-Image burst: N `qwen_image` jobs at once (encode → denoise → decode) vs the diffusers pipeline per job.

Baseline: `QwenImagePipeline.from_pretrained(...)` called once per prompt, one job at a time,
each image saved as PNG, as a diffusers user writes it. Same checkpoint, prompts, size, steps,
guidance and seeds (a `torch.Generator` seeded per job on both sides).

    .venv/bin/python -m loadtest.image_burst [--jobs 32] [--size 32] [--steps 4] [--repeats 3]
"""

from __future__ import annotations

import io
import time
from pathlib import Path

from loadtest.report import (
    add_cpu_rows,
    baseline_metrics,
    burst_table,
    common_args,
    configure_baseline_threads,
    job_metrics,
    machine,
)
from loadtest.stack import Stack

STAGES = ["encode", "denoise", "decode"]
# The pipeline's default guidance; without a negative prompt classifier-free guidance is off, which the
# baseline says with true_cfg_scale=1 (the stage engine does the same).
GUIDANCE = 4.0


def prompt(i: int) -> str:
    return f"a small red house by a lake, picture {i}"


class Baseline:
    def __init__(self, path: Path, device: str):
        import diffusers

        self.device = device
        self.pipe = diffusers.QwenImagePipeline.from_pretrained(path).to(device)
        self.pipe.set_progress_bar_config(disable=True)

    def run(self, n: int, size: int, steps: int) -> dict:
        import torch

        started, ends = time.perf_counter(), []
        for i in range(n):
            image = self.pipe(prompt=prompt(i), height=size, width=size, num_inference_steps=steps,
                              true_cfg_scale=1.0, generator=torch.Generator(self.device).manual_seed(i)).images[0]
            image.save(io.BytesIO(), format="PNG")
            ends.append(time.perf_counter())
        return baseline_metrics(started, ends)


def omni_run(stack: Stack, n: int, size: int, steps: int) -> dict:
    bodies = [{"pipeline": "qwen_image", "inputs": {"prompt": prompt(i)},
               "params": {"height": size, "width": size, "num_inference_steps": steps, "guidance_scale": GUIDANCE,
                          "seed": i}} for i in range(n)]
    jobs, cpu = stack.run_burst(bodies, connections=min(n, 64))
    return {**job_metrics(jobs), "cpu_per_job": {s: c / n for s, c in cpu.items()}}


def main() -> None:
    parser = common_args(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--size", type=int, default=32, help="height and width in pixels")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--models", type=Path, default=None, help="OMNIJOBS_MODELS_DIR (default: the settings')")
    parser.add_argument("--baseline-threads", type=int, default=1, help="torch threads of the baseline process")
    args = parser.parse_args()
    print(machine())
    configure_baseline_threads(args.baseline_threads)
    from omnijobs.engines.factory import resolve_model_path
    from omnijobs.models.tiny import build_tiny
    from omnijobs.pipelines import load_registry
    from omnijobs.settings import get_settings

    models = args.models or get_settings().models_dir
    path = resolve_model_path(load_registry().get("qwen_image").stages["denoise"].model, models)
    if args.models is None:
        build_tiny(models, only=[str(path.relative_to(models))])
    baseline = Baseline(path, "cpu" if args.device == "cpu" else args.device)
    base, omni = [], []
    with Stack(models_dir=models, device=args.device, keep_logs=args.keep_logs) as stack:
        stack.start_workers([f"qwen_image.{s}" for s in STAGES])
        baseline.run(1, args.size, 1)  # warm-up of both sides
        omni_run(stack, 2, args.size, 1)
        for _ in range(args.repeats):
            base.append(baseline.run(args.jobs, args.size, args.steps))
            omni.append(omni_run(stack, args.jobs, args.size, args.steps))
    table = burst_table(f"Qwen-Image burst: {args.jobs} `qwen_image` jobs at once, {args.size}×{args.size}, "
                        f"{args.steps} steps ({args.repeats} repeat(s))", "QwenImagePipeline, one job at a time",
                        base, omni)
    add_cpu_rows(table, omni, [f"qwen_image.{s}" for s in STAGES])
    table.print([f"Baseline: one process, {args.baseline_threads} torch thread(s); OmniJobs: one worker per stage "
                 "(OMNIJOBS_TORCH_THREADS=1) + the API, all on this machine.", machine()])


if __name__ == "__main__":
    main()
