"""The typed shape of a pipeline file. Structure only; graph checks live in graph.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"

# What travels on a port. Small values go inline in the database; the rest through a connector.
PortType = Literal["text", "tokens", "json", "integer", "number", "boolean", "tensor", "image", "audio", "video"]
ParamType = Literal["integer", "number", "boolean", "string", "json"]

_PY_TYPE_TO_PARAM: dict[type, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputSpec(_Frozen):
    """One input a job supplies."""

    type: PortType
    required: bool = True
    default: Any = None
    description: str = ""
    max_length: int | None = Field(default=None, gt=0)


class ParamSpec(_Frozen):
    """One tunable of a stage, with the bounds a job's override must respect."""

    type: ParamType
    default: Any = None
    min: float | None = None
    max: float | None = None
    choices: list[Any] | None = None
    # Image and video sizes must divide into the model's patches (e.g. 16 pixels).
    multiple_of: int | None = Field(default=None, gt=0)
    nullable: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, value: Any) -> Any:
        # `max_tokens: 32` is shorthand for `{type: integer, default: 32}`.
        if isinstance(value, dict):
            return value
        if value is None:
            return {"type": "json", "default": None, "nullable": True}
        kind = _PY_TYPE_TO_PARAM.get(type(value), "json")
        return {"type": kind, "default": value}


class BatchSpec(_Frozen):
    max_size: int = Field(default=1, ge=1, le=1024)
    max_wait_ms: int = Field(default=0, ge=0, le=60_000)


class EngineArgs(_Frozen):
    """Arguments of an engine that keeps a model server in the worker (vLLM); unset means its default.

    The seeds' deployments set these per stage: context length, concurrent sequences, memory share,
    tensor-parallel width, CUDA graphs off, and how many images/audios/videos one prompt may carry.
    """

    max_model_len: int | None = Field(default=None, gt=0)
    max_num_seqs: int | None = Field(default=None, ge=1, le=4096)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    tensor_parallel_size: int | None = Field(default=None, ge=1, le=64)
    enforce_eager: bool | None = None
    limit_mm_per_prompt: dict[Literal["image", "audio", "video"], int] | None = None
    dtype: str | None = None


class RunIf(_Frozen):
    """Run the stage only when a job input (a list) contains a value, e.g. the audio modality."""

    input: str
    contains: Any


class StreamSpec(_Frozen):
    """A streamed input: the upstream stage hands chunks over while it generates.

    The downstream run starts once the upstream run has started (its first chunk is read from the
    stream, not from the upstream's recorded output), and consumes chunks of `chunk` frames in order
    (the first one `first_chunk` frames, for a quicker first output) until the upstream's end mark.
    """

    chunk: int = Field(default=25, ge=1, le=100_000)
    first_chunk: int | None = Field(default=None, ge=1, le=100_000)


class StageSpec(_Frozen):
    name: str = Field(pattern=NAME_PATTERN)
    engine: str
    model: str = ""
    # port name -> "job.<input>" or "<stage>.<output>"
    inputs: dict[str, str] = Field(default_factory=dict)
    # The outputs this stage keeps; empty means every output its engine produces.
    outputs: list[str] = Field(default_factory=list)
    batch: BatchSpec = Field(default_factory=BatchSpec)
    timeout_s: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=100)
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    # Static, engine-specific configuration (prompt template, dtype...).
    options: dict[str, Any] = Field(default_factory=dict)
    engine_args: EngineArgs = Field(default_factory=EngineArgs)
    # When set and false for a job, the run is `skipped`, and so is every stage fed by it.
    run_if: RunIf | None = None
    # Input ports fed by a stream from their upstream stage instead of its recorded output.
    streams: dict[str, StreamSpec] = Field(default_factory=dict)
    description: str = ""

    @property
    def upstream(self) -> set[str]:
        return {ref.split(".", 1)[0] for ref in self.inputs.values() if not ref.startswith("job.")}

    @property
    def streamed_upstream(self) -> set[str]:
        """Upstream stages this stage may start beside: every edge from them is streamed."""
        edges: dict[str, bool] = {}
        for port, ref in self.inputs.items():
            if not ref.startswith("job."):
                head = ref.split(".", 1)[0]
                edges[head] = edges.get(head, True) and port in self.streams
        return {head for head, streamed in edges.items() if streamed}

    @model_validator(mode="after")
    def _streams_are_upstream_inputs(self) -> StageSpec:
        for port in self.streams:
            ref = self.inputs.get(port)
            if ref is None or ref.startswith("job."):
                raise ValueError(f"stage '{self.name}': streams.{port} must name an input fed by an upstream stage")
        return self

    def default_params(self) -> dict[str, Any]:
        return {name: spec.default for name, spec in self.params.items()}


class PipelineSpec(_Frozen):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    inputs: dict[str, InputSpec]
    # job output name -> "<stage>.<output>"
    outputs: dict[str, str]
    stages: dict[str, StageSpec]
    source: str = "<memory>"

    @field_validator("stages", mode="before")
    @classmethod
    def _name_stages(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        for name, body in value.items():
            if isinstance(body, dict) and body.get("name", name) != name:
                raise ValueError(f"stage '{name}' says name '{body['name']}': the key is the stage's name")
        return {name: {**body, "name": name} if isinstance(body, dict) else body for name, body in value.items()}

    def stage(self, name: str) -> StageSpec:
        return self.stages[name]

    def queue(self, stage: str) -> str:
        return f"omni.{self.name}.{stage}"

    def public(self) -> dict[str, Any]:
        """The description clients see at GET /v1/pipelines/{name}."""
        return {
            "name": self.name,
            "description": self.description,
            "inputs": {k: v.model_dump(exclude_none=True) for k, v in self.inputs.items()},
            "outputs": dict(self.outputs),
            "stages": [
                {
                    "name": s.name,
                    "engine": s.engine,
                    "model": s.model,
                    "inputs": dict(s.inputs),
                    "queue": self.queue(s.name),
                    "batch": s.batch.model_dump(),
                    "timeout_s": s.timeout_s,
                    "max_attempts": s.max_attempts,
                    "params": {k: v.model_dump(exclude_none=True) for k, v in s.params.items()},
                    "run_if": s.run_if.model_dump() if s.run_if else None,
                    "streams": {k: v.model_dump(exclude_none=True) for k, v in s.streams.items()},
                }
                for s in self.stages.values()
            ],
        }
