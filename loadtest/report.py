"""What every benchmark prints: the machine's load, and a table of medians, spreads and ratios over repeats."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from datetime import datetime


def common_args(description: str, repeats: int = 3) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=repeats, help="repeats of each side (median and spread)")
    parser.add_argument("--device", default="cpu", help="device of the baseline and of every worker (cpu, cuda:N)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the stack's process logs")
    return parser


def machine() -> str:
    """One line: cores, load averages, time; printed before and after, since a shared machine drifts."""
    one, five, fifteen = os.getloadavg()
    return (f"{datetime.now().isoformat(timespec='seconds')}  {platform.node()}  {os.cpu_count()} cores  "
            f"load avg {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min)")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1), linear between the nearest ranks."""
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def spread(values: list[float], digits: int) -> str:
    """median [min–max]."""
    if not values:
        return "-"
    fmt = f"{{:.{digits}f}}"
    med = fmt.format(statistics.median(values))
    return med if len(values) == 1 else f"{med} [{fmt.format(min(values))}–{fmt.format(max(values))}]"


class Table:
    """Rows of metric, baseline, OmniJobs and OmniJobs/baseline, each over the repeats.

    The ratio is taken per repeat (the sides ran back to back), then summarised like the others.
    """

    def __init__(self, title: str, baseline: str):
        self.title = title
        self.baseline = baseline
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, metric: str, base: list[float] | None, omni: list[float], digits: int = 2,
            ratio: bool = True) -> None:
        ratios = [o / b for b, o in zip(base or [], omni, strict=False) if b] if ratio and base else []
        self.rows.append((metric, spread(base or [], digits), spread(omni, digits),
                          spread(ratios, 2) + "×" if ratios else "-"))

    def print(self, notes: list[str] = ()) -> None:
        header = ("metric", f"baseline ({self.baseline})", "OmniJobs", "OmniJobs / baseline")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(4)]
        print(f"\n## {self.title}\n")
        for row in [header, tuple("-" * w for w in widths), *self.rows]:
            print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        for note in notes:
            print(f"\n{note}")
        print()


def job_metrics(jobs: list[dict]) -> dict[str, float]:
    """Throughput over the burst (first created → last finished) and JCTs, from the jobs' own timestamps."""
    created = [datetime.fromisoformat(j["created_at"]) for j in jobs]
    finished = [datetime.fromisoformat(j["finished_at"]) for j in jobs]
    jct = [(f - c).total_seconds() for c, f in zip(created, finished, strict=True)]
    wall = (max(finished) - min(created)).total_seconds()
    return {"wall_s": wall, "jobs_per_s": len(jobs) / wall, "jct_mean_s": statistics.fmean(jct),
            "jct_p50_s": percentile(jct, 0.5), "jct_p99_s": percentile(jct, 0.99)}


def hops_s(jobs: list[dict]) -> list[float]:
    """Every stage-to-stage hop: a stage's start minus the end of the stage before it (in pipeline order)."""
    hops = []
    for job in jobs:
        stages = sorted((s for s in job["stages"] if s["started_at"]), key=lambda s: s["started_at"])
        for prev, nxt in zip(stages, stages[1:], strict=False):
            hops.append((datetime.fromisoformat(nxt["started_at"]) -
                         datetime.fromisoformat(prev["finished_at"])).total_seconds())
    return hops


def baseline_metrics(started: float, ends: list[float]) -> dict[str, float]:
    """The same figures for jobs run one after another, all 'submitted' at `started` (perf_counter)."""
    jct = [e - started for e in ends]
    wall = max(ends) - started
    return {"wall_s": wall, "jobs_per_s": len(ends) / wall, "jct_mean_s": statistics.fmean(jct),
            "jct_p50_s": percentile(jct, 0.5), "jct_p99_s": percentile(jct, 0.99)}


def configure_baseline_threads(threads: int) -> None:
    """The baseline's torch threads; the stack's workers run OMNIJOBS_TORCH_THREADS=1 each."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def burst_table(title: str, baseline: str, base: list[dict], omni: list[dict], work: str | None = None) -> Table:
    """Throughput and JCT rows of a burst benchmark; `work` names an extra rate (e.g. "tokens/s")."""
    table = Table(title, baseline)
    table.add("throughput (jobs/s)", [b["jobs_per_s"] for b in base], [o["jobs_per_s"] for o in omni], 3)
    if work:
        table.add(work, [b["work_per_s"] for b in base], [o["work_per_s"] for o in omni], 1)
    for key, label in (("jct_mean_s", "mean JCT (s)"), ("jct_p50_s", "p50 JCT (s)"), ("jct_p99_s", "p99 JCT (s)")):
        table.add(label, [b[key] for b in base], [o[key] for o in omni], 2)
    table.add("wall time of the burst (s)", [b["wall_s"] for b in base], [o["wall_s"] for o in omni], 1)
    return table


def add_cpu_rows(table: Table, omni: list[dict], stages: list[str]) -> None:
    """Each worker's CPU seconds per job (OmniJobs only): where the machine's time went."""
    for stage in stages:
        table.add(f"worker CPU per job, {stage} (s)", None, [o["cpu_per_job"][stage] for o in omni], 3, ratio=False)
