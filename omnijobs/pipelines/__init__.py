"""Pipelines: named DAGs of stages, declared in YAML and validated as graphs."""

from omnijobs.pipelines.registry import PipelineRegistry, load_registry
from omnijobs.pipelines.spec import PipelineSpec, StageSpec

__all__ = ["PipelineRegistry", "PipelineSpec", "StageSpec", "load_registry"]
