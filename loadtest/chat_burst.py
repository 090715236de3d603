"""Chat burst: N `chat` jobs submitted at once vs the same jobs one at a time with transformers `generate`.

Same tiny model, prompts, params and seeds on both sides (32 tokens each, EOS ignored so every
job makes the same number of tokens). JCT counts from the moment the burst was submitted; the
baseline's jobs all "arrive" when its loop starts.

    .venv/bin/python -m loadtest.chat_burst [--jobs 64] [--max-tokens 32] [--repeats 3]
"""

from __future__ import annotations

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

PARAMS = {"temperature": 0.8, "top_p": 0.95, "ignore_eos": True}


def prompt(i: int) -> str:
    return f"request {i} " * (1 + i % 4)


class Baseline:
    """What a user writes with transformers alone: load once, then generate each request in turn."""

    def __init__(self, model_dir: Path, device: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).to(self.device).eval()

    def run(self, n: int, max_tokens: int) -> dict:
        import torch

        started, ends, tokens = time.perf_counter(), [], 0
        for i in range(n):
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt(i)}], tokenize=False,
                                                      add_generation_prompt=True)
            enc = self.tokenizer(text, return_tensors="pt").to(self.device)
            torch.manual_seed(i)
            with torch.no_grad():
                out = self.model.generate(**enc, do_sample=True, temperature=PARAMS["temperature"],
                                          top_p=PARAMS["top_p"], top_k=0, max_new_tokens=max_tokens,
                                          min_new_tokens=max_tokens, pad_token_id=self.tokenizer.pad_token_id)
            tokens += out.shape[1] - enc["input_ids"].shape[1]
            ends.append(time.perf_counter())
        metrics = baseline_metrics(started, ends)
        return {**metrics, "work_per_s": tokens / metrics["wall_s"]}


def omni_run(stack: Stack, n: int, max_tokens: int) -> dict:
    bodies = [{"pipeline": "chat", "inputs": {"prompt": prompt(i)},
               "params": {**PARAMS, "max_tokens": max_tokens, "seed": i}} for i in range(n)]
    jobs, cpu = stack.run_burst(bodies, connections=min(n, 64))
    tokens = sum(j["stages"][0]["outputs"]["usage"]["completion_tokens"] for j in jobs)
    metrics = job_metrics(jobs)
    return {**metrics, "work_per_s": tokens / metrics["wall_s"], "cpu_per_job": {s: c / n for s, c in cpu.items()}}


def main() -> None:
    parser = common_args(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
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
    path = resolve_model_path(load_registry().get("chat").stages["generate"].model, models)
    if args.models is None:
        build_tiny(models, only=[str(path.relative_to(models))])
    baseline = Baseline(path, args.device)
    base, omni = [], []
    with Stack(models_dir=models, device=args.device, keep_logs=args.keep_logs) as stack:
        stack.start_workers(["chat.generate"])
        baseline.run(2, 4)  # warm-up of both sides
        omni_run(stack, 2, 4)
        for _ in range(args.repeats):
            base.append(baseline.run(args.jobs, args.max_tokens))
            omni.append(omni_run(stack, args.jobs, args.max_tokens))
    table = burst_table(f"Chat burst: {args.jobs} `chat` jobs at once, {args.max_tokens} tokens each "
                        f"({args.repeats} repeat(s))", "transformers generate, one job at a time", base, omni,
                        work="tokens/s")
    add_cpu_rows(table, omni, ["chat.generate"])
    table.print([f"Baseline: one process, {args.baseline_threads} torch thread(s); OmniJobs: one worker "
                 "(chat.generate, OMNIJOBS_TORCH_THREADS=1) + the API, all on this machine.", machine()])


if __name__ == "__main__":
    main()
