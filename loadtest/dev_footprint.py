"""What `omnijobs dev` costs on this machine: time to ready, memory, and CPU while idle.

    python loadtest/dev_footprint.py                  # every pipeline, default grouping
    python loadtest/dev_footprint.py --one-per-stage  # a worker process per stage, as before
    python loadtest/dev_footprint.py -p chat -p qwen_image --idle-s 60

Models must be built already (`omnijobs models build-tiny`): building is not what is measured.
Memory is the RSS summed over the supervisor and every process below it, read once ready and
again after the idle period; idle CPU is the CPU time they all used over the idle period, as a
share of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from loadtest.stack import cpu_s

REPO = Path(__file__).resolve().parent.parent


def tree(proc: psutil.Process) -> list[psutil.Process]:
    return [proc, *proc.children(recursive=True)]


def rss_mib(procs: list[psutil.Process]) -> float:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-p", "--pipeline", action="append", default=[])
    parser.add_argument("--one-per-stage", action="store_true")
    parser.add_argument("--processes", type=int, default=0)
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="dev-footprint-"))
    cmd = [sys.executable, "-m", "omnijobs", "dev", "--dir", str(folder / "dev"), "--port", "0",
           "--processes", str(args.processes)]
    cmd += ["--one-per-stage"] if args.one_per_stage else []
    for name in args.pipeline:
        cmd += ["-p", name]
    log = folder / "dev.out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while b"OmniJobs is running at" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() - started > args.timeout_s:
                print(log.read_text(), file=sys.stderr)
                return 1
            time.sleep(0.2)
        ready_s = time.monotonic() - started
        procs = tree(psutil.Process(proc.pid))
        workers = [p for p in procs if "worker" in " ".join(p.cmdline())]
        rss_ready = rss_mib(procs)
        cpu0 = cpu_s(procs)
        time.sleep(args.idle_s)
        procs = tree(psutil.Process(proc.pid))
        idle_cpu = (cpu_s(procs) - cpu0) / args.idle_s
        banner = log.read_text()
        served = next((ln.split(":", 1)[1].split("(")[0].strip() for ln in banner.splitlines()
                       if ln.startswith("pipelines:")), "")
        result = {
            "pipelines": served,
            "skipped": [ln.split()[2].rstrip(":") for ln in banner.splitlines() if ln.startswith("skipping pipeline")],
            "one_per_stage": args.one_per_stage,
            "processes": len(procs),
            "worker_processes": len(workers),
            "ready_s": round(ready_s, 1),
            "rss_mib_ready": round(rss_ready),
            "rss_mib_idle": round(rss_mib(procs)),
            "idle_cpu_share_of_one_core": round(idle_cpu, 3),
            "cpus": os.cpu_count(),
        }
        print(json.dumps(result, indent=2))
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
