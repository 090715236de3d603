"""Intake: POST /v1/jobs at 16 and 64 connections with no workers, vs a raw insert + commit + publish.

OmniJobs side: the API (`omnijobs api --workers N`) on a fresh database, `chat` jobs, each
connection submitting as soon as its previous answer came. Baseline: the floor a hand-written
intake cannot go below on the same Postgres and Redis — per request one INSERT of the job (JSON
inputs) + COMMIT and one LPUSH of a message, from as many threads as there are connections, each
with its own database connection; no HTTP, no validation. The 500 req/s at p99 ≤ 100 ms goal is
an absolute figure: compare the OmniJobs column with it.

The per-key rate limit is raised out of the way (OMNIJOBS_RATE_LIMIT_PER_S=1000000, burst the
same) but still checked; the stage queue is emptied between runs so its depth bound never trips.
The load generator runs on the same cores as the API: its CPU is shown.

    .venv/bin/python -m loadtest.intake [--connections 16,64] [--seconds 10] [--api-workers 1]
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import psutil
import psycopg
import redis

from loadtest.report import Table, common_args, machine, percentile
from loadtest.stack import Stack

BODY = {"pipeline": "chat", "inputs": {"prompt": "Hello there, how are you?"}, "params": {"max_tokens": 8, "seed": 1}}


def own_cpu_s() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def omni_run(stack: Stack, connections: int, seconds: float) -> dict:
    from omnijobs.admission import queue_keys

    latencies: list[float] = []
    errors: dict[int, int] = {}

    async def go() -> None:
        deadline = time.perf_counter() + seconds
        async with stack.async_client(connections) as client:
            async def loop() -> None:
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    r = await client.post("/v1/jobs", json=BODY)
                    if r.status_code == 202:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors[r.status_code] = errors.get(r.status_code, 0) + 1
            await asyncio.gather(*(loop() for _ in range(connections)))

    api0, me0, t0 = stack.cpu_s(["api"])["api"], own_cpu_s(), time.perf_counter()
    asyncio.run(go())
    wall = time.perf_counter() - t0
    api_cpu, my_cpu = stack.cpu_s(["api"])["api"] - api0, own_cpu_s() - me0
    redis.Redis(port=stack.redis_port).delete(*queue_keys("omni.chat.generate"))
    n = len(latencies)
    return {"rps": n / wall, "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
            "server_cpu_ms": api_cpu * 1000 / max(n, 1), "client_cpu_ms": my_cpu * 1000 / max(n, 1),
            "errors": errors}


def baseline_run(stack: Stack, connections: int, seconds: float) -> dict:
    dsn = stack.db_url.replace("postgresql+psycopg://", "postgresql://")
    broker = redis.Redis(port=stack.redis_port, db=2)
    latencies: list[list[float]] = [[] for _ in range(connections)]
    deadline = time.perf_counter() + seconds
    pg_pids: list[int] = []

    def loop(mine: list[float]) -> None:
        with psycopg.connect(dsn) as conn:
            pg_pids.append(conn.info.backend_pid)
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                job_id = uuid.uuid4()
                conn.execute("INSERT INTO bench_intake (id, pipeline, inputs, params) VALUES (%s, %s, %s, %s)",
                             (job_id, BODY["pipeline"], json.dumps(BODY["inputs"]), json.dumps(BODY["params"])))
                conn.commit()
                broker.lpush("bench:intake", json.dumps({"job_id": str(job_id), "stage": "generate"}))
                mine.append(time.perf_counter() - t0)

    me0, t0 = own_cpu_s(), time.perf_counter()
    threads = [threading.Thread(target=loop, args=(mine,)) for mine in latencies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    broker.delete("bench:intake")
    flat = [x for mine in latencies for x in mine]
    return {"rps": len(flat) / wall, "p50": percentile(flat, 0.5), "p99": percentile(flat, 0.99),
            "client_cpu_ms": (own_cpu_s() - me0) * 1000 / max(len(flat), 1)}


def main() -> None:
    parser = common_args(__doc__.splitlines()[0])
    parser.add_argument("--connections", default="16,64")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each run")
    parser.add_argument("--api-workers", type=int, default=1, help="`omnijobs api --workers`")
    args = parser.parse_args()
    print(machine())
    env = {"OMNIJOBS_RATE_LIMIT_PER_S": "1000000", "OMNIJOBS_RATE_LIMIT_BURST": "1000000"}
    results: dict[int, tuple[list[dict], list[dict], str]] = {}
    with Stack(env=env, api_workers=args.api_workers, keep_logs=args.keep_logs) as stack:
        with psycopg.connect(stack.db_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            conn.execute("CREATE TABLE bench_intake (id uuid PRIMARY KEY, pipeline text NOT NULL, inputs jsonb, "
                         "params jsonb, created_at timestamptz NOT NULL DEFAULT now())")
        omni_run(stack, 4, 1.0)  # warm-up
        for c in [int(x) for x in args.connections.split(",")]:
            base, omni = [], []
            for _ in range(args.repeats):
                base.append(baseline_run(stack, c, args.seconds))
                omni.append(omni_run(stack, c, args.seconds))
            results[c] = (base, omni, machine())
    for c, (base, omni, load) in results.items():
        table = Table(f"Intake: POST /v1/jobs, {c} connections, no workers, {args.seconds:g} s runs "
                      f"({args.repeats} repeat(s)); goal ≥ 500 req/s at p99 ≤ 100 ms",
                      "raw INSERT + COMMIT + LPUSH per request")
        table.add("requests/s", [b["rps"] for b in base], [o["rps"] for o in omni], 1)
        table.add("latency p50 (ms)", [b["p50"] * 1000 for b in base], [o["p50"] * 1000 for o in omni], 1)
        table.add("latency p99 (ms)", [b["p99"] * 1000 for b in base], [o["p99"] * 1000 for o in omni], 1)
        table.add(f"API CPU per request (ms, {args.api_workers} API process(es))", None,
                  [o["server_cpu_ms"] for o in omni], 2, ratio=False)
        table.add("CPU of the benchmark process per request (ms)", [b["client_cpu_ms"] for b in base],
                  [o["client_cpu_ms"] for o in omni], 2, ratio=False)
        errors = [o["errors"] for o in omni if o["errors"]]
        table.print([f"Non-202 answers: {errors}" if errors else "Every request answered 202.",
                     "Rate limit raised to 1e6/s (OMNIJOBS_RATE_LIMIT_PER_S, _BURST) but still checked.",
                     f"After these runs: {load}"])


if __name__ == "__main__":
    main()
