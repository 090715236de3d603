"""Checking a job's inputs and params against its pipeline. Pure: no services."""

from __future__ import annotations

import math

import pytest

from omnijobs.errors import InvalidInput
from omnijobs.pipelines.loader import load_file, parse
from omnijobs.pipelines.registry import BUILTIN_DIR
from omnijobs.submission import effective_params, reject_nul, validate_inputs, validate_params


@pytest.fixture(scope="module")
def chat():
    return load_file(BUILTIN_DIR / "chat.yaml")


@pytest.fixture(scope="module")
def draft_rewrite():
    return load_file(BUILTIN_DIR / "draft_rewrite.yaml")


def invalid(fn, *args) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        fn(*args)
    assert info.value.status == 422
    return info.value


# --- inputs ---------------------------------------------------------------------------------------


def test_valid_inputs_pass_through(chat):
    assert validate_inputs(chat, {"prompt": "hi", "system": "be brief"}) == {"prompt": "hi", "system": "be brief"}


def test_optional_input_without_default_is_left_out(chat):
    assert validate_inputs(chat, {"prompt": "hi"}) == {"prompt": "hi"}


def test_inputs_must_be_an_object(chat):
    assert invalid(validate_inputs, chat, ["hi"]).field == "inputs"


@pytest.mark.parametrize("inputs", [{}, {"prompt": None}, {"system": "x"}])
def test_missing_required_input(chat, inputs):
    err = invalid(validate_inputs, chat, inputs)
    assert err.field == "inputs.prompt"
    assert "missing required input 'prompt'" in err.message


@pytest.mark.parametrize("value,kind", [(5, "integer"), (1.5, "number"), (True, "boolean"), (["a"], "array")])
def test_wrong_type_for_text(chat, value, kind):
    err = invalid(validate_inputs, chat, {"prompt": value})
    assert err.field == "inputs.prompt"
    assert f"got {kind}" in err.message


def test_unknown_input(chat):
    err = invalid(validate_inputs, chat, {"prompt": "hi", "context": "x"})
    assert err.field == "inputs.context"
    assert "unknown input 'context'" in err.message
    assert "prompt, system" in err.message


def test_text_at_max_length_is_accepted(chat):
    assert validate_inputs(chat, {"prompt": "x" * 32000})["prompt"] == "x" * 32000


def test_text_over_max_length(chat):
    err = invalid(validate_inputs, chat, {"prompt": "x" * 32001})
    assert err.field == "inputs.prompt"
    assert "32001 characters" in err.message and "32000" in err.message


def test_optional_input_over_max_length(chat):
    err = invalid(validate_inputs, chat, {"prompt": "hi", "system": "s" * 8001})
    assert err.field == "inputs.system"


def test_default_filled_for_optional_input(draft_rewrite):
    clean = validate_inputs(draft_rewrite, {"prompt": "hi"})
    assert clean == {"prompt": "hi", "instructions": "Rewrite the text to be clearer."}
    assert validate_inputs(draft_rewrite, {"prompt": "hi", "instructions": None})["instructions"] == (
        "Rewrite the text to be clearer."
    )


def test_given_value_overrides_default(draft_rewrite):
    assert validate_inputs(draft_rewrite, {"prompt": "hi", "instructions": "shorter"})["instructions"] == "shorter"


TYPED = parse(
    """
name: typed
inputs:
  prompt: {type: text}
  ids: {type: tokens, required: false, max_length: 3}
  n: {type: integer, required: false}
  x: {type: number, required: false}
  flag: {type: boolean, required: false}
  pic: {type: image, required: false}
  blob: {type: json, required: false}
outputs: {text: say.text}
stages:
  say:
    engine: tests.fixtures.engines:ECHO
    inputs: {prompt: job.prompt}
""",
    "typed.yaml",
)


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("ids", [1, 2, 3], [1, 2, 3]),
        ("n", 4.0, 4),
        ("x", 3, 3.0),
        ("flag", False, False),
        ("pic", "file:abc", "file:abc"),
        ("blob", {"any": [1]}, {"any": [1]}),
    ],
)
def test_typed_inputs_accepted(name, value, expected):
    got = validate_inputs(TYPED, {"prompt": "p", name: value})[name]
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    "name,value",
    [
        ("ids", [1, 2, 3, 4]),
        ("ids", [1, True]),
        ("ids", "1 2"),
        ("n", 1.5),
        ("n", "1"),
        ("n", True),
        ("x", math.nan),
        ("x", math.inf),
        ("flag", 1),
        ("pic", ""),
        ("pic", 7),
    ],
)
def test_typed_inputs_refused(name, value):
    err = invalid(validate_inputs, TYPED, {"prompt": "p", name: value})
    assert err.field == f"inputs.{name}"


# --- params ---------------------------------------------------------------------------------------


def test_no_params(chat):
    assert validate_params(chat, None) == {}
    assert validate_params(chat, {}) == {}


def test_params_must_be_an_object(chat):
    assert invalid(validate_params, chat, [1]).field == "params"


def test_per_stage_params(draft_rewrite):
    assert validate_params(draft_rewrite, {"draft": {"max_tokens": 10}}) == {"draft": {"max_tokens": 10}}


def test_per_stage_params_must_be_an_object(draft_rewrite):
    assert invalid(validate_params, draft_rewrite, {"draft": 10}).field == "params.draft"


def test_top_level_param_applies_to_every_stage_that_has_it(draft_rewrite):
    assert validate_params(draft_rewrite, {"max_tokens": 10}) == {
        "draft": {"max_tokens": 10},
        "rewrite": {"max_tokens": 10},
    }


@pytest.mark.parametrize(
    "params",
    [
        {"max_tokens": 10, "draft": {"max_tokens": 5}},
        {"draft": {"max_tokens": 5}, "max_tokens": 10},
    ],
)
def test_per_stage_param_wins_over_top_level_in_any_order(draft_rewrite, params):
    assert validate_params(draft_rewrite, params) == {"draft": {"max_tokens": 5}, "rewrite": {"max_tokens": 10}}


def test_unknown_top_level_param(chat):
    err = invalid(validate_params, chat, {"beam_width": 4})
    assert err.field == "params.beam_width"
    assert "no stage of pipeline 'chat' has a param 'beam_width'" in err.message


def test_unknown_per_stage_param(chat):
    err = invalid(validate_params, chat, {"generate": {"beam_width": 4}})
    assert err.field == "params.generate.beam_width"
    assert "stage 'generate' has no param 'beam_width'" in err.message
    assert "max_tokens" in err.message


@pytest.mark.parametrize("value,bound", [(0, ">= 1"), (5000, "<= 4096")])
def test_out_of_bounds_param(chat, value, bound):
    err = invalid(validate_params, chat, {"max_tokens": value})
    assert err.field == "params.max_tokens"
    assert bound in err.message and str(value) in err.message


@pytest.mark.parametrize("value", [1, 4096])
def test_param_bounds_are_inclusive(chat, value):
    assert validate_params(chat, {"max_tokens": value}) == {"generate": {"max_tokens": value}}


def test_out_of_bounds_per_stage_field(draft_rewrite):
    err = invalid(validate_params, draft_rewrite, {"rewrite": {"temperature": 2.5}})
    assert err.field == "params.rewrite.temperature"
    assert "<= 2" in err.message


def test_wrong_param_type_string_for_number(chat):
    err = invalid(validate_params, chat, {"temperature": "hot"})
    assert err.field == "params.temperature"
    assert "must be a number, got string" in err.message


def test_boolean_for_integer_param(chat):
    err = invalid(validate_params, chat, {"max_tokens": True})
    assert err.field == "params.max_tokens"
    assert "got boolean" in err.message


def test_integer_for_boolean_param(chat):
    err = invalid(validate_params, chat, {"ignore_eos": 1})
    assert err.field == "params.ignore_eos"


def test_nullable_seed_accepts_none(chat):
    assert validate_params(chat, {"seed": None}) == {"generate": {"seed": None}}
    assert validate_params(chat, {"generate": {"seed": None}}) == {"generate": {"seed": None}}


def test_non_nullable_param_refuses_none(chat):
    err = invalid(validate_params, chat, {"max_tokens": None})
    assert err.field == "params.max_tokens"
    assert "null" in err.message


def test_integer_valued_float_accepted_for_integer(chat):
    out = validate_params(chat, {"max_tokens": 12.0})
    assert out == {"generate": {"max_tokens": 12}}
    assert type(out["generate"]["max_tokens"]) is int


def test_fractional_float_refused_for_integer(chat):
    assert invalid(validate_params, chat, {"max_tokens": 12.5}).field == "params.max_tokens"


def test_integer_accepted_for_number_becomes_float(chat):
    out = validate_params(chat, {"temperature": 1})
    assert out["generate"]["temperature"] == 1.0 and type(out["generate"]["temperature"]) is float


@pytest.mark.parametrize("param", ["temperature", "max_tokens", "seed"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_refused(chat, param, value):
    err = invalid(validate_params, chat, {param: value})
    assert err.field == f"params.{param}"


CHOICES = parse(
    """
name: choosy
inputs: {prompt: {type: text}}
outputs: {text: say.text}
stages:
  say:
    engine: tests.fixtures.engines:ECHO
    inputs: {prompt: job.prompt}
    params:
      mode: {type: string, default: fast, choices: [fast, slow]}
""",
    "choosy.yaml",
)


def test_param_choices():
    assert validate_params(CHOICES, {"mode": "slow"}) == {"say": {"mode": "slow"}}
    err = invalid(validate_params, CHOICES, {"mode": "medium"})
    assert err.field == "params.mode" and "one of" in err.message
    assert invalid(validate_params, CHOICES, {"mode": 3}).field == "params.mode"


def test_effective_params_defaults_and_overrides(chat, draft_rewrite):
    defaults = effective_params(chat, "generate", {})
    assert defaults == {"max_tokens": 32, "temperature": 0.7, "top_p": 1.0, "seed": None, "ignore_eos": False}
    overrides = validate_params(draft_rewrite, {"max_tokens": 10, "rewrite": {"seed": 7}})
    assert effective_params(draft_rewrite, "draft", overrides)["max_tokens"] == 10
    rewrite = effective_params(draft_rewrite, "rewrite", overrides)
    assert rewrite["max_tokens"] == 10 and rewrite["seed"] == 7 and rewrite["temperature"] == 0.7
    assert effective_params(draft_rewrite, "draft", overrides)["seed"] is None


# --- NUL characters -------------------------------------------------------------------------------


def test_reject_nul_accepts_clean_values():
    reject_nul({"inputs": {"prompt": "hi"}, "params": {"a": [1, "x", None]}, "metadata": {"k": {"n": [{"d": "e"}]}}})


def test_reject_nul_in_nested_metadata():
    err = invalid(reject_nul, {"inputs": {"prompt": "ok"}, "metadata": {"tags": ["a", {"note": "b\x00c"}]}})
    assert err.field == "metadata.tags.1.note"
    assert "NUL" in err.message


def test_reject_nul_in_key():
    err = invalid(reject_nul, {"metadata": {"bad\x00key": 1}})
    assert err.field == "metadata"


def test_reject_nul_with_field_prefix():
    assert invalid(reject_nul, ["a", "\x00"], "inputs.ids").field == "inputs.ids.1"
    assert invalid(reject_nul, "\x00").field is None


def test_sizes_must_divide_into_patches():
    qwen_image = load_file(BUILTIN_DIR / "qwen_image.yaml")
    assert validate_params(qwen_image, {"height": 48, "width": 64})
    with pytest.raises(InvalidInput, match="multiple of 16") as info:
        validate_params(qwen_image, {"width": 40})
    assert info.value.field.endswith("width")
