"""Graph checks of a pipeline: references, port types, cycles, and the order of stages."""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter

from omnijobs.engines.kinds import ENGINE_KINDS, engine_kind
from omnijobs.errors import SpecError
from omnijobs.pipelines.spec import PipelineSpec, StageSpec


def validate(spec: PipelineSpec) -> None:
    """Raise SpecError naming file, stage and field for the first problem found."""
    for stage in spec.stages.values():
        _check_engine(spec, stage)
    for stage in spec.stages.values():
        _check_stage(spec, stage)
    topological_order(spec)
    for name, ref in spec.outputs.items():
        _check_output_ref(spec, ref, stage=None, field=f"outputs.{name}")
    if not spec.outputs:
        raise SpecError(spec.source, "a pipeline must declare at least one output", field="outputs")
    if all(stage.run_if is not None for stage in spec.stages.values() if not stage.upstream):
        # Otherwise a job could skip every stage and never start.
        raise SpecError(spec.source, "at least one first stage must run unconditionally (no run_if)", field="run_if")


def topological_order(spec: PipelineSpec) -> list[str]:
    graph = {name: stage.upstream for name, stage in spec.stages.items()}
    try:
        return list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise SpecError(spec.source, f"stages form a cycle: {cycle}", field="inputs") from None


def stage_output_types(spec: PipelineSpec, stage: StageSpec) -> dict[str, str]:
    kind = engine_kind(stage.engine)
    kept = stage.outputs or list(kind.outputs)
    return {port: kind.outputs[port] for port in kept}


def job_output_ports(spec: PipelineSpec, stage: str) -> set[str]:
    """The ports of a stage that are the job's final outputs."""
    return {ref.partition(".")[2] for ref in spec.outputs.values() if ref.partition(".")[0] == stage}


def sole_consumer_inputs(spec: PipelineSpec, stage: str) -> set[str]:
    """A stage's input ports fed by an upstream output that nothing else reads (no other stage, not the job)."""
    readers: dict[str, int] = {}
    for other in spec.stages.values():
        for ref in other.inputs.values():
            readers[ref] = readers.get(ref, 0) + 1
    final = set(spec.outputs.values())
    return {
        port for port, ref in spec.stages[stage].inputs.items()
        if not ref.startswith("job.") and readers[ref] == 1 and ref not in final
    }


def _check_engine(spec: PipelineSpec, stage: StageSpec) -> None:
    if engine_kind(stage.engine) is None:
        known = ", ".join(sorted(ENGINE_KINDS))
        raise SpecError(
            spec.source, f"unknown engine '{stage.engine}' (known: {known}, or <module>:<EngineKind>)",
            stage.name, "engine",
        )


def _check_stage(spec: PipelineSpec, stage: StageSpec) -> None:
    kind = engine_kind(stage.engine)
    if stage.run_if is not None and stage.run_if.input not in spec.inputs:
        raise SpecError(
            spec.source, f"run_if names no input of the pipeline: '{stage.run_if.input}'", stage.name, "run_if.input"
        )
    for port in stage.outputs:
        if port not in kind.outputs:
            raise SpecError(
                spec.source, f"engine '{kind.name}' has no output '{port}'", stage.name, f"outputs.{port}"
            )
    missing = kind.required_inputs() - set(stage.inputs)
    if missing:
        raise SpecError(
            spec.source, f"required input(s) not wired: {', '.join(sorted(missing))}", stage.name, "inputs"
        )
    for port in stage.streams:
        head, _, tail = stage.inputs[port].partition(".")
        upstream = engine_kind(spec.stages[head].engine) if head in spec.stages else None
        if port not in kind.streams_in:
            raise SpecError(spec.source, f"engine '{kind.name}' cannot read input '{port}' as a stream",
                            stage.name, f"streams.{port}")
        if upstream is not None and tail not in upstream.streams_out:
            raise SpecError(spec.source, f"engine '{upstream.name}' of stage '{head}' does not write '{tail}' as a "
                            "stream", stage.name, f"streams.{port}")
    for port, ref in stage.inputs.items():
        field = f"inputs.{port}"
        if port not in kind.inputs:
            raise SpecError(spec.source, f"engine '{kind.name}' has no input '{port}'", stage.name, field)
        source_type = _ref_type(spec, ref, stage.name, field)
        if source_type != kind.input_type(port):
            raise SpecError(
                spec.source,
                f"'{ref}' is {source_type} but input '{port}' takes {kind.input_type(port)}",
                stage.name,
                field,
            )


def _ref_type(spec: PipelineSpec, ref: str, stage: str | None, field: str) -> str:
    head, _, tail = ref.partition(".")
    if not tail:
        raise SpecError(spec.source, f"'{ref}' is not of the form job.<input> or <stage>.<output>", stage, field)
    if head == "job":
        if tail not in spec.inputs:
            raise SpecError(spec.source, f"'{ref}' names no input of the pipeline", stage, field)
        return spec.inputs[tail].type
    return _check_output_ref(spec, ref, stage, field)


def _check_output_ref(spec: PipelineSpec, ref: str, stage: str | None, field: str) -> str:
    head, _, tail = ref.partition(".")
    if head not in spec.stages:
        raise SpecError(spec.source, f"'{ref}' names no stage of the pipeline", stage, field)
    if head == stage:
        raise SpecError(spec.source, f"'{ref}' makes the stage depend on itself", stage, field)
    outputs = stage_output_types(spec, spec.stages[head])
    if tail not in outputs:
        raise SpecError(spec.source, f"stage '{head}' has no output '{tail}'", stage, field)
    return outputs[tail]
