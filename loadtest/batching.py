"""Batching benchmark: tokens/s of the LM engine at batch sizes 1..N, as ratios to batch size 1.

Runs in one process with one torch thread, on the tiny model (`omnijobs models build-tiny`):

    .venv/bin/python loadtest/batching.py --models ~/.cache/omnijobs/models --requests 32
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, default=Path("~/.cache/omnijobs/models").expanduser())
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--sizes", default="1,2,4,8,16")
    args = parser.parse_args()

    from omnijobs.engines.torch_runtime import configure_threads

    configure_threads(1)
    from omnijobs.engines.base import StageRequest
    from omnijobs.engines.factory import create_engine
    from omnijobs.models.tiny import build_tiny
    from omnijobs.pipelines import load_registry

    build_tiny(args.models)
    engine = create_engine(load_registry().get("chat").stage("generate"), "cpu", args.models)
    engine.load()
    params = {"max_tokens": args.max_tokens, "temperature": 0.8, "top_p": 0.95, "ignore_eos": True}
    requests = [StageRequest(str(i), {"prompt": f"request {i} " * (1 + i % 4)}, {**params, "seed": i})
                for i in range(args.requests)]
    engine.run(requests[:2])  # warm-up
    base = None
    print(f"{'batch':>5} {'tokens/s':>10} {'ratio':>6}")
    for size in [int(s) for s in args.sizes.split(",")]:
        started, tokens = time.perf_counter(), 0
        for i in range(0, len(requests), size):
            tokens += sum(r["usage"]["completion_tokens"] for r in engine.run(requests[i : i + size]))
        rate = tokens / (time.perf_counter() - started)
        base = base or rate
        print(f"{size:>5} {rate:>10.1f} {rate / base:>6.2f}")


if __name__ == "__main__":
    main()
