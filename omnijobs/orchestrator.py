"""Pure scheduling decisions over a job's stage statuses: what is ready, when a job is done."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omnijobs.pipelines.graph import topological_order
from omnijobs.pipelines.spec import PipelineSpec
from omnijobs.store.states import JobStatus, RunStatus


def initial_ready(spec: PipelineSpec, skipped: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Stages fed only by job inputs."""
    return [name for name, stage in spec.stages.items() if not stage.upstream and name not in skipped]


def skipped_stages(spec: PipelineSpec, job_inputs: Mapping[str, Any]) -> set[str]:
    """Stages a job turns off through their `run_if`, and every stage downstream of one."""
    skipped: set[str] = set()
    for name in topological_order(spec):
        stage = spec.stages[name]
        cond = stage.run_if
        if stage.upstream & skipped:
            skipped.add(name)
        elif cond is not None:
            value = job_inputs.get(cond.input)
            if not isinstance(value, list | tuple | str) or cond.contains not in value:
                skipped.add(name)
    return skipped


def newly_ready(spec: PipelineSpec, statuses: Mapping[str, RunStatus]) -> list[str]:
    """Waiting stages whose upstream stages have all succeeded (fan-in waits for every branch).

    An upstream stage that streams to this one only needs to have started: its chunks arrive while
    it runs.
    """
    def fed(stage, up: str) -> bool:
        if statuses[up] == RunStatus.SUCCEEDED:
            return True
        return up in stage.streamed_upstream and statuses[up] == RunStatus.RUNNING

    return [
        name
        for name, stage in spec.stages.items()
        if statuses[name] == RunStatus.WAITING and all(fed(stage, up) for up in stage.upstream)
    ]


def streams_from(spec: PipelineSpec, stage: str) -> bool:
    """Whether some stage starts beside this one when it starts (a streamed edge leaves it)."""
    return any(stage in other.streamed_upstream for other in spec.stages.values())


def job_outcome(statuses: Mapping[str, RunStatus]) -> JobStatus | None:
    """The job's final status once its stages decide it, else None."""
    values = set(statuses.values())
    if RunStatus.FAILED in values:
        return JobStatus.FAILED
    if values <= {RunStatus.SUCCEEDED, RunStatus.SKIPPED}:
        return JobStatus.SUCCEEDED
    if RunStatus.CANCELED in values and not values & {RunStatus.RUNNING}:
        return JobStatus.CANCELED
    return None


def job_outputs(spec: PipelineSpec, run_outputs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The job's named outputs; those of skipped stages are left out."""
    outputs = {}
    for name, ref in spec.outputs.items():
        stage, _, port = ref.partition(".")
        if stage in run_outputs:
            outputs[name] = run_outputs[stage].get(port)
    return outputs


def resolve_inputs(
    spec: PipelineSpec, stage: str, job_inputs: Mapping[str, Any], run_outputs: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The values on a stage's input ports, from job inputs or upstream outputs."""
    values = {}
    for port, ref in spec.stages[stage].inputs.items():
        head, _, tail = ref.partition(".")
        values[port] = job_inputs.get(tail) if head == "job" else run_outputs.get(head, {}).get(tail)
    return values
