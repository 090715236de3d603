"""No-op 3-stage pipeline vs a raw Celery chain of three no-op tasks on the same Redis.

What the stage machinery costs by itself: jobs/s, stage-to-stage hop latency (a stage's start
minus the previous stage's end, from the jobs' stage timings) and worker CPU per row per stage
(psutil, before/after each burst). Both sides run one solo worker process per stage on the
stack's private Redis; the Celery side persists nothing.

    .venv/bin/python -m loadtest.noop_pipeline [--jobs 200] [--repeats 3]
"""

from __future__ import annotations

import json
import sys
import time

import redis

from loadtest.report import Table, common_args, hops_s, job_metrics, machine, percentile
from loadtest.stack import Stack

STAGES = ("a", "b", "c")
CHAIN_DB = 1  # the Celery chain's queues, beside the stack's on db 0


def celery_burst(stack: Stack, n: int) -> dict:
    from celery import chain

    from loadtest import celery_chain as cc

    done = redis.Redis(port=stack.redis_port, db=CHAIN_DB)
    done.delete(cc.DONE)
    names = [f"celery-{s}" for s in STAGES]
    before = stack.cpu_s(names)
    started = time.time()
    for _ in range(n):
        chain(cc.a.s([]), cc.b.s(), cc.c.s()).apply_async()
    while done.llen(cc.DONE) < n:
        time.sleep(0.005)
    after = stack.cpu_s(names)
    stamps = [json.loads(raw) for raw in done.lrange(cc.DONE, 0, -1)]
    wall = max(s[-1][1] for s in stamps) - started
    hops = [s[i + 1][0] - s[i][1] for s in stamps for i in range(len(STAGES) - 1)]
    return {"jobs_per_s": n / wall, "hops": hops,
            "cpu_ms": {stage: (after[f"celery-{stage}"] - before[f"celery-{stage}"]) * 1000 / n for stage in STAGES}}


def omni_burst(stack: Stack, n: int, connections: int) -> dict:
    bodies = [{"pipeline": "noop3", "inputs": {"prompt": f"job {i}"}} for i in range(n)]
    api_before = stack.cpu_s(["api"])["api"]
    jobs, cpu = stack.run_burst(bodies, connections)
    api_cpu = stack.cpu_s(["api"])["api"] - api_before
    return {"jobs_per_s": job_metrics(jobs)["jobs_per_s"], "hops": hops_s(jobs),
            "cpu_ms": {stage: cpu[f"noop3.{stage}"] * 1000 / n for stage in STAGES},
            "api_ms": api_cpu * 1000 / n}


def main() -> None:
    parser = common_args(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs (chains) per burst")
    parser.add_argument("--connections", type=int, default=16, help="HTTP connections submitting the jobs")
    args = parser.parse_args()
    print(machine())
    # The per-key rate limit is off: this measures the stages, not admission.
    with Stack(env={"OMNIJOBS_RATE_LIMIT_PER_S": "0"}, device=args.device, keep_logs=args.keep_logs) as stack:
        from loadtest import celery_chain as cc

        chain_url = f"redis://127.0.0.1:{stack.redis_port}/{CHAIN_DB}"
        cc.app.conf.broker_url = chain_url
        stack.env["BENCH_BROKER_URL"] = chain_url
        for stage in STAGES:
            stack.spawn(f"celery-{stage}", [sys.executable, "-m", "celery", "-A", "loadtest.celery_chain", "worker",
                                             "-Q", f"bench.{stage}", "-P", "solo", "-c", "1", "-n", f"bench-{stage}@%h",
                                             "--without-gossip", "--without-mingle", "-l", "INFO"], omnijobs=False)
        stack.start_workers([f"noop3.{s}" for s in STAGES])
        for stage in STAGES:
            stack.wait_log(f"celery-{stage}", b" ready.")
        celery_burst(stack, 10)  # warm-up: connections, imports
        omni_burst(stack, 10, args.connections)
        base, omni = [], []
        for _ in range(args.repeats):
            base.append(celery_burst(stack, args.jobs))
            omni.append(omni_burst(stack, args.jobs, args.connections))
    table = Table(f"No-op 3-stage pipeline, {args.jobs} jobs at once ({args.repeats} repeat(s))", "raw Celery chain")
    table.add("jobs/s", [b["jobs_per_s"] for b in base], [o["jobs_per_s"] for o in omni], 1)
    for q in (0.5, 0.99):
        table.add(f"hop p{int(q * 100)} (ms)", [percentile(b["hops"], q) * 1000 for b in base],
                  [percentile(o["hops"], q) * 1000 for o in omni], 1)
    for stage in STAGES:
        table.add(f"worker CPU per row, stage {stage} (ms)", [b["cpu_ms"][stage] for b in base],
                  [o["cpu_ms"][stage] for o in omni], 2)
    table.add("API CPU per job (ms)", None, [o["api_ms"] for o in omni], 2, ratio=False)
    table.print([f"Per-key rate limit off (OMNIJOBS_RATE_LIMIT_PER_S=0); jobs submitted over {args.connections} "
                 "HTTP connections; the Celery chains with apply_async from one process.", machine()])


if __name__ == "__main__":
    main()
