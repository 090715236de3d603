"""Pipeline files: loading, structural and graph checks, and the registry. Pure: no services."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from omnijobs.errors import SpecError
from omnijobs.pipelines import graph
from omnijobs.pipelines.loader import load_file, parse
from omnijobs.pipelines.registry import BUILTIN_DIR, load_registry

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "pipelines"
SRC = "mine.yaml"

BUILTIN_FILES = sorted(BUILTIN_DIR.glob("*.yaml"))
FIXTURE_FILES = sorted(FIXTURES.glob("*.yaml"))


def pipeline(stages: str, outputs: str = "text: gen.text", inputs: str = "prompt: {type: text}") -> str:
    """A pipeline document with the given (YAML) stages, outputs and inputs blocks."""
    return (
        "name: p\n"
        "inputs:\n" + textwrap.indent(textwrap.dedent(inputs).strip(), "  ") + "\n"
        "outputs:\n" + textwrap.indent(textwrap.dedent(outputs).strip(), "  ") + "\n"
        "stages:\n" + textwrap.indent(textwrap.dedent(stages).strip(), "  ") + "\n"
    )


ONE_STAGE = """
gen:
  engine: transformers_lm
  inputs: {prompt: job.prompt}
"""


def spec_error(text: str, source: str = SRC) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse(text, source)
    return info.value


def assert_names(err: SpecError, source: str = SRC, stage: str | None = None, field: str | None = None) -> None:
    msg = str(err)
    assert msg.startswith(source), msg
    assert err.source == source
    if stage is not None:
        assert f"stage '{stage}'" in msg, msg
        assert err.stage == stage
    if field is not None:
        assert f"field '{field}'" in msg, msg
        assert err.field == field


# --- shipped and fixture pipelines ----------------------------------------------------------


def test_shipped_pipelines_exist():
    assert {p.stem for p in BUILTIN_FILES} >= {"chat", "draft_rewrite"}


@pytest.mark.parametrize("path", BUILTIN_FILES + FIXTURE_FILES, ids=lambda p: p.name)
def test_every_pipeline_file_loads(path):
    spec = load_file(path)
    assert spec.name == path.stem
    assert spec.source == str(path)
    assert spec.outputs
    order = graph.topological_order(spec)
    assert sorted(order) == sorted(spec.stages)


def test_registry_holds_the_shipped_pipelines():
    registry = load_registry()
    assert {"chat", "draft_rewrite"} <= set(registry.names())
    assert registry.get("chat").stages["generate"].batch.max_size == 64


def test_registry_loads_extra_folder_from_path_string():
    registry = load_registry(str(FIXTURES))
    assert {"chat", "draft_rewrite", "echo", "diamond"} <= set(registry.names())
    assert "diamond" in registry


def test_registry_unknown_pipeline_is_not_found():
    from omnijobs.errors import NotFound

    with pytest.raises(NotFound) as info:
        load_registry().get("nope")
    assert info.value.field == "pipeline"


def test_chat_spec_shape():
    spec = load_file(BUILTIN_DIR / "chat.yaml")
    gen = spec.stages["generate"]
    assert gen.name == "generate"
    assert gen.inputs == {"prompt": "job.prompt", "system": "job.system", "history": "job.history"}
    assert gen.params["seed"].nullable is True
    assert spec.queue("generate") == "omni.chat.generate"
    assert spec.public()["stages"][0]["queue"] == "omni.chat.generate"


def test_draft_rewrite_orders_draft_before_rewrite():
    spec = load_file(BUILTIN_DIR / "draft_rewrite.yaml")
    assert spec.stages["rewrite"].upstream == {"draft"}
    assert graph.topological_order(spec) == ["draft", "rewrite"]


def test_diamond_orders_root_first_and_join_last():
    spec = load_file(FIXTURES / "diamond.yaml")
    order = graph.topological_order(spec)
    assert order[0] == "root"
    assert order[-1] == "join"
    assert set(order[1:3]) == {"left", "right"}
    assert spec.stages["join"].upstream == {"left", "right"}


def test_param_shorthand():
    spec = parse(pipeline(ONE_STAGE + "  params: {max_tokens: 32, temperature: 0.5, greedy: true, seed: null}\n"))
    params = spec.stages["gen"].params
    assert (params["max_tokens"].type, params["max_tokens"].default) == ("integer", 32)
    assert (params["temperature"].type, params["temperature"].default) == ("number", 0.5)
    assert params["greedy"].type == "boolean"
    assert params["seed"].nullable is True and params["seed"].default is None


def test_custom_engine_kind_by_module_attr():
    spec = parse(pipeline("gen:\n  engine: tests.fixtures.engines:ECHO\n  inputs: {prompt: job.prompt}\n"))
    assert graph.stage_output_types(spec, spec.stages["gen"]) == {"text": "text"}


def test_stage_outputs_restrict_what_downstream_may_use():
    stages = """
    gen:
      engine: transformers_lm
      inputs: {prompt: job.prompt}
      outputs: [text]
    """
    spec = parse(pipeline(stages))
    assert graph.stage_output_types(spec, spec.stages["gen"]) == {"text": "text"}
    err = spec_error(pipeline(stages, outputs="usage: gen.usage"))
    assert_names(err, field="outputs.usage")
    assert "no output 'usage'" in str(err)


# --- reference errors ------------------------------------------------------------------------


def test_unknown_stage_ref():
    stages = ONE_STAGE + "post:\n  engine: transformers_lm\n  inputs: {prompt: ghost.text}\n"
    err = spec_error(pipeline(stages))
    assert_names(err, stage="post", field="inputs.prompt")
    assert "'ghost.text' names no stage" in str(err)


def test_unknown_job_input_ref():
    err = spec_error(pipeline("gen:\n  engine: transformers_lm\n  inputs: {prompt: job.question}\n"))
    assert_names(err, stage="gen", field="inputs.prompt")
    assert "'job.question' names no input" in str(err)


def test_ref_without_dot():
    err = spec_error(pipeline("gen:\n  engine: transformers_lm\n  inputs: {prompt: prompt}\n"))
    assert_names(err, stage="gen", field="inputs.prompt")
    assert "job.<input> or <stage>.<output>" in str(err)


def test_unknown_output_port_of_upstream_stage():
    stages = ONE_STAGE + "post:\n  engine: transformers_lm\n  inputs: {prompt: gen.logits}\n"
    err = spec_error(pipeline(stages, outputs="text: post.text"))
    assert_names(err, stage="post", field="inputs.prompt")
    assert "stage 'gen' has no output 'logits'" in str(err)


def test_unknown_output_port_in_stage_outputs_list():
    err = spec_error(pipeline(ONE_STAGE + "  outputs: [text, logits]\n"))
    assert_names(err, stage="gen", field="outputs.logits")
    assert "has no output 'logits'" in str(err)


def test_unknown_output_port_in_pipeline_outputs():
    err = spec_error(pipeline(ONE_STAGE, outputs="answer: gen.logits"))
    assert_names(err, field="outputs.answer")
    assert err.stage is None
    assert "stage 'gen' has no output 'logits'" in str(err)


def test_pipeline_output_names_unknown_stage():
    err = spec_error(pipeline(ONE_STAGE, outputs="answer: ghost.text"))
    assert_names(err, field="outputs.answer")
    assert "'ghost.text' names no stage" in str(err)


def test_unknown_engine_input_port():
    err = spec_error(pipeline("gen:\n  engine: transformers_lm\n  inputs: {prompt: job.prompt, context: job.prompt}\n"))
    assert_names(err, stage="gen", field="inputs.context")
    assert "has no input 'context'" in str(err)


def test_self_reference():
    stages = "gen:\n  engine: tests.fixtures.engines:ECHO\n  inputs: {prompt: job.prompt, system: gen.text}\n"
    err = spec_error(pipeline(stages))
    assert_names(err, stage="gen", field="inputs.system")
    assert "depend on itself" in str(err)


def test_cycle():
    stages = """
    a:
      engine: transformers_lm
      inputs: {prompt: b.text}
    b:
      engine: transformers_lm
      inputs: {prompt: a.text}
    """
    err = spec_error(pipeline(stages, outputs="text: a.text"))
    assert_names(err, field="inputs")
    msg = str(err)
    assert "cycle" in msg
    cycle = msg.split("cycle: ", 1)[1].split(" -> ")
    assert set(cycle) == {"a", "b"} and cycle[0] == cycle[-1]


def test_required_engine_input_not_wired():
    err = spec_error(pipeline("gen:\n  engine: transformers_lm\n  inputs: {system: job.prompt}\n"))
    assert_names(err, stage="gen", field="inputs")
    assert "not wired: prompt" in str(err)


def test_optional_engine_input_may_stay_unwired():
    spec = parse(pipeline(ONE_STAGE))
    assert spec.stages["gen"].inputs == {"prompt": "job.prompt"}


def test_port_type_mismatch_tokens_into_text():
    stages = ONE_STAGE + "post:\n  engine: transformers_lm\n  inputs: {prompt: gen.token_ids}\n"
    err = spec_error(pipeline(stages, outputs="text: post.text"))
    assert_names(err, stage="post", field="inputs.prompt")
    assert "'gen.token_ids' is tokens but input 'prompt' takes text" in str(err)


def test_port_type_mismatch_job_input():
    err = spec_error(pipeline(ONE_STAGE, inputs="prompt: {type: json}"))
    assert_names(err, stage="gen", field="inputs.prompt")
    assert "is json but input 'prompt' takes text" in str(err)


def test_unknown_engine():
    err = spec_error(pipeline("gen:\n  engine: tensorrt\n  inputs: {prompt: job.prompt}\n"))
    assert_names(err, stage="gen", field="engine")
    assert "unknown engine 'tensorrt'" in str(err)
    assert "transformers_lm" in str(err)


@pytest.mark.parametrize(
    "engine", ["tests.fixtures.engines:NOPE", "tests.fixtures.no_such_module:ECHO", "os:path", "transformers_lm2"]
)
def test_unknown_custom_engine(engine):
    err = spec_error(pipeline(f"gen:\n  engine: '{engine}'\n  inputs: {{prompt: job.prompt}}\n"))
    assert_names(err, stage="gen", field="engine")
    assert f"unknown engine '{engine}'" in str(err)


def test_unknown_engine_on_upstream_stage_listed_after_its_consumer():
    stages = """
    down:
      engine: transformers_lm
      inputs: {prompt: up.text}
    up:
      engine: tensorrt
      inputs: {prompt: job.prompt}
    """
    err = spec_error(pipeline(stages, outputs="text: down.text"))
    assert_names(err, stage="up", field="engine")


def test_custom_engine_with_empty_module_is_a_spec_error():
    err = spec_error(pipeline("gen:\n  engine: ':ECHO'\n  inputs: {prompt: job.prompt}\n"))
    assert_names(err, stage="gen", field="engine")


# --- structural errors -----------------------------------------------------------------------


def test_duplicate_stage_names_in_yaml_mapping():
    stages = ONE_STAGE + "gen:\n  engine: transformers_lm\n  inputs: {prompt: job.prompt}\n"
    err = spec_error(pipeline(stages))
    assert_names(err)
    assert "duplicate key 'gen'" in str(err)


def test_duplicate_top_level_key():
    err = spec_error("name: a\nname: b\n")
    assert "duplicate key 'name' (line 2)" in str(err)


@pytest.mark.parametrize("size", [0, 2000])
def test_bad_batch_max_size(size):
    err = spec_error(pipeline(ONE_STAGE + f"  batch: {{max_size: {size}}}\n"))
    assert_names(err, stage="gen", field="batch.max_size")


def test_bad_batch_max_wait():
    err = spec_error(pipeline(ONE_STAGE + "  batch: {max_wait_ms: -1}\n"))
    assert_names(err, stage="gen", field="batch.max_wait_ms")


def test_unknown_stage_field():
    err = spec_error(pipeline(ONE_STAGE + "  retries: 3\n"))
    assert_names(err, stage="gen", field="retries")


def test_bad_stage_name():
    err = spec_error(pipeline("Gen:\n  engine: transformers_lm\n  inputs: {prompt: job.prompt}\n", outputs="t: Gen.text"))
    assert_names(err, stage="Gen", field="name")


def test_bad_input_type():
    err = spec_error(pipeline(ONE_STAGE, inputs="prompt: {type: string}"))
    assert_names(err, field="inputs.prompt.type")


def test_invalid_yaml():
    err = spec_error("name: [unclosed\n")
    assert_names(err)
    assert "invalid YAML" in str(err)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", ""])
def test_top_level_not_a_mapping(text):
    err = spec_error(text)
    assert_names(err)
    assert "must be a mapping" in str(err)


def test_pipeline_with_empty_outputs():
    text = pipeline(ONE_STAGE).replace("outputs:\n  text: gen.text\n", "outputs: {}\n")
    err = spec_error(text)
    assert_names(err, field="outputs")
    assert "at least one output" in str(err)


def test_pipeline_without_outputs_key():
    text = pipeline(ONE_STAGE).replace("outputs:\n  text: gen.text\n", "")
    err = spec_error(text)
    assert_names(err, field="outputs")


def test_load_file_names_the_path(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(pipeline("gen:\n  engine: transformers_lm\n  inputs: {prompt: job.nope}\n"))
    with pytest.raises(SpecError) as info:
        load_file(path)
    assert_names(info.value, source=str(path), stage="gen", field="inputs.prompt")


def test_load_file_missing(tmp_path):
    path = tmp_path / "missing.yaml"
    with pytest.raises(SpecError) as info:
        load_file(path)
    assert str(path) in str(info.value)
    assert "cannot read" in str(info.value)


def test_unhashable_yaml_key_is_a_spec_error():
    err = spec_error("? [a]\n: 1\n")
    assert_names(err)


def test_stage_body_name_cannot_differ_from_its_key():
    text = pipeline("a:\n  name: b\n  engine: transformers_lm\n  inputs: {prompt: job.prompt}\n", outputs="t: a.text")
    try:
        spec = parse(text, SRC)
    except SpecError as err:
        assert_names(err, stage="a")
    else:
        assert spec.stages["a"].name == "a"


# --- registry -----------------------------------------------------------------------------------


def _write(path: Path, name: str) -> Path:
    path.write_text(pipeline(ONE_STAGE).replace("name: p\n", f"name: {name}\n"))
    return path


def test_duplicate_pipeline_names_across_files(tmp_path):
    first = _write(tmp_path / "a.yaml", "twin")
    second = _write(tmp_path / "b.yaml", "twin")
    with pytest.raises(SpecError) as info:
        load_registry([tmp_path])
    err = info.value
    assert err.source == str(second)
    assert_names(err, source=str(second), field="name")
    assert "pipeline 'twin' is already defined in" in str(err)
    assert str(first) in str(err)


def test_duplicate_of_a_shipped_pipeline(tmp_path):
    mine = _write(tmp_path / "mychat.yaml", "chat")
    with pytest.raises(SpecError) as info:
        load_registry(str(tmp_path))
    assert_names(info.value, source=str(mine), field="name")
    assert str(BUILTIN_DIR / "chat.yaml") in str(info.value)


def test_registry_accepts_files_and_pathsep_list(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    _write(tmp_path / "x" / "one.yaml", "one")
    two = _write(tmp_path / "y" / "two.yaml", "two")
    registry = load_registry(os.pathsep.join([str(tmp_path / "x"), str(two)]))
    assert {"one", "two"} <= set(registry.names())
    assert registry.get("two").source == str(two)


def test_registry_reports_bad_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- not a mapping\n")
    with pytest.raises(SpecError) as info:
        load_registry([tmp_path])
    assert info.value.source == str(bad)
