"""Chat burst on the vLLM engine vs the transformers engine vs a one-process transformers loop.

N `chat` jobs of mixed lengths (max_tokens cycling 8/16/32/64, EOS ignored) submitted at once to
one `chat.generate` worker: first the transformers engine (batch loop), then the vLLM engine
(continuous batching, worker in .venv-vllm), then the same requests one by one in this process.
Also the worker's init time (spawn to ready) and resident memory after the burst.

    .venv/bin/python -m loadtest.vllm_chat [--jobs 64] [--repeats 1]

On a GPU host with real checkpoints, the same script measures what matters (needs a vLLM
environment with CUDA `vllm` at .venv-vllm):

    OMNIJOBS_PIPELINES_PATH=omnijobs/pipelines/builtin/real \\
        .venv/bin/python -m loadtest.vllm_chat --device cuda:0 --pipeline qwen2_5_7b_chat --jobs 256
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from loadtest.chat_burst import prompt
from loadtest.report import baseline_metrics, common_args, configure_baseline_threads, job_metrics, machine
from loadtest.stack import REPO, Stack

LENGTHS = [8, 16, 32, 64]
PARAMS = {"temperature": 0.8, "top_p": 0.95, "ignore_eos": True}
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, MB."""
    from tests.procs import descendants

    total = 0
    for p in {pid, *descendants(pid)}:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def start_worker(stack: Stack, name: str, stage: str, python: Path | None, engine: str) -> float:
    """Start one worker for the stage; seconds from spawn to ready."""
    started = time.perf_counter()
    if python is None:
        stack.spawn(name, ["worker", "--stage", stage, "--device", stack.device])
    else:
        log = open(stack.logs / f"{name}.log", "ab")
        stack.procs[name] = subprocess.Popen(
            [str(python), "-m", "omnijobs", "worker", "--stage", stage, "--device", stack.device],
            env={**stack.env, "OMNIJOBS_AR_ENGINE": engine}, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    stack.wait_log(name, b" ready.", timeout=900)
    return time.perf_counter() - started


def stop_worker(stack: Stack, name: str) -> None:
    import os
    import signal

    proc = stack.procs.pop(name)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def burst(stack: Stack, pipeline: str, n: int) -> dict:
    bodies = [{"pipeline": pipeline, "inputs": {"prompt": prompt(i)},
               "params": {**PARAMS, "max_tokens": LENGTHS[i % len(LENGTHS)], "seed": i}} for i in range(n)]
    jobs, _ = stack.run_burst(bodies, connections=min(n, 64))
    assert {j["status"] for j in jobs} == {"succeeded"}, {j["status"] for j in jobs}
    tokens = sum(j["stages"][0]["outputs"]["usage"]["completion_tokens"] for j in jobs)
    metrics = job_metrics(jobs)
    return {**metrics, "tokens_per_s": tokens / metrics["wall_s"]}


def baseline(model_dir: Path, device: str, n: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    init_s = time.perf_counter() - started
    started, ends, tokens = time.perf_counter(), [], 0
    for i in range(n):
        text = tok.apply_chat_template([{"role": "user", "content": prompt(i)}], tokenize=False,
                                       add_generation_prompt=True)
        enc = tok(text, return_tensors="pt").to(device)
        torch.manual_seed(i)
        n_tokens = LENGTHS[i % len(LENGTHS)]
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=PARAMS["temperature"], top_p=PARAMS["top_p"],
                                 top_k=0, max_new_tokens=n_tokens, min_new_tokens=n_tokens,
                                 pad_token_id=tok.pad_token_id)
        tokens += out.shape[1] - enc["input_ids"].shape[1]
        ends.append(time.perf_counter())
    metrics = baseline_metrics(started, ends)
    import os

    return {**metrics, "tokens_per_s": tokens / metrics["wall_s"], "init_s": init_s, "rss_mb": rss_mb(os.getpid())}


def main() -> None:
    parser = common_args(__doc__.splitlines()[0], repeats=1)
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--pipeline", default="chat")
    parser.add_argument("--models", type=Path, default=None, help="OMNIJOBS_MODELS_DIR (default: the settings')")
    args = parser.parse_args()
    print(machine())
    configure_baseline_threads(1)
    from omnijobs.engines.factory import resolve_model_path
    from omnijobs.models.tiny import build_tiny
    from omnijobs.pipelines import load_registry
    from omnijobs.settings import get_settings

    models = args.models or get_settings().models_dir
    stage = f"{args.pipeline}.generate"
    path = resolve_model_path(load_registry(get_settings().pipelines_path).get(args.pipeline)
                              .stages["generate"].model, models)
    if args.pipeline == "chat" and args.models is None:
        build_tiny(models, only=[str(path.relative_to(models))])
    rows: dict[str, list[dict]] = {"transformers engine": [], "vLLM engine": []}
    with Stack(models_dir=models, device=args.device, keep_logs=args.keep_logs) as stack:
        for label, python, engine in [("transformers engine", None, "transformers"),
                                      ("vLLM engine", VLLM_PYTHON, "vllm")]:
            init_s = start_worker(stack, label, stage, python, engine)
            burst(stack, args.pipeline, 4)  # warm-up
            for _ in range(args.repeats):
                rows[label].append({**burst(stack, args.pipeline, args.jobs), "init_s": init_s,
                                    "rss_mb": rss_mb(stack.procs[label].pid)})
            stop_worker(stack, label)
    rows["one process, one job at a time"] = [baseline(path, "cpu" if args.device == "cpu" else "cuda:0", args.jobs)
                                              for _ in range(args.repeats)]
    print(f"\n## Chat burst: {args.jobs} jobs at once, max_tokens {'/'.join(map(str, LENGTHS))} "
          f"({args.repeats} repeat(s))\n")
    print("| engine | tokens/s | mean JCT s | p99 JCT s | init s | RSS MB |")
    print("|---|---|---|---|---|---|")
    for label, runs in rows.items():
        def mean(key, runs=runs):
            return sum(r[key] for r in runs) / len(runs)
        print(f"| {label} | {mean('tokens_per_s'):.0f} | {mean('jct_mean_s'):.2f} | {mean('jct_p99_s'):.2f} | "
              f"{mean('init_s'):.1f} | {mean('rss_mb'):.0f} |")
    print("\nWorkers: OMNIJOBS_TORCH_THREADS=1; vLLM in one process (VLLM_ENABLE_V1_MULTIPROCESSING=0); "
          "init = spawn to ready (imports included); RSS after the burst.")
    print(machine())

if __name__ == "__main__":
    main()
