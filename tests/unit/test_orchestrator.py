"""Scheduling decisions over stage statuses, and the retry policy. Pure: no services."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from omnijobs.errors import EngineDead, FatalStageError, RetryableStageError, StageError
from omnijobs.orchestrator import initial_ready, job_outcome, job_outputs, newly_ready, resolve_inputs
from omnijobs.pipelines.loader import load_file, parse
from omnijobs.pipelines.registry import BUILTIN_DIR
from omnijobs.retry import RetryDecision, RetryPolicy, error_record
from omnijobs.store.states import FINAL_JOB, FINAL_RUN, JobStatus, RunStatus

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "pipelines"

W, Q, R, S, F, C = (
    RunStatus.WAITING,
    RunStatus.QUEUED,
    RunStatus.RUNNING,
    RunStatus.SUCCEEDED,
    RunStatus.FAILED,
    RunStatus.CANCELED,
)


@pytest.fixture(scope="module")
def diamond():
    return load_file(FIXTURES / "diamond.yaml")


@pytest.fixture(scope="module")
def draft_rewrite():
    return load_file(BUILTIN_DIR / "draft_rewrite.yaml")


def statuses(root=W, left=W, right=W, join=W):
    return {"root": root, "left": left, "right": right, "join": join}


# --- readiness ------------------------------------------------------------------------------------


def test_initial_ready(diamond, draft_rewrite):
    assert initial_ready(diamond) == ["root"]
    assert initial_ready(draft_rewrite) == ["draft"]
    assert initial_ready(load_file(BUILTIN_DIR / "chat.yaml")) == ["generate"]


def test_nothing_ready_while_root_runs(diamond):
    assert newly_ready(diamond, statuses(root=R)) == []


def test_fan_out_releases_both_branches(diamond):
    assert sorted(newly_ready(diamond, statuses(root=S))) == ["left", "right"]


@pytest.mark.parametrize(
    "left,right",
    [(S, W), (S, Q), (S, R), (R, S), (S, F), (F, S), (S, C), (Q, Q)],
)
def test_fan_in_waits_for_both_branches(diamond, left, right):
    ready = newly_ready(diamond, statuses(root=S, left=left, right=right))
    assert "join" not in ready


def test_fan_in_released_when_both_branches_succeeded(diamond):
    assert newly_ready(diamond, statuses(root=S, left=S, right=S)) == ["join"]


def test_newly_ready_only_returns_waiting_stages(diamond):
    assert newly_ready(diamond, statuses(root=S, left=Q, right=R)) == []
    assert newly_ready(diamond, statuses(root=S, left=S, right=S, join=Q)) == []
    assert newly_ready(diamond, statuses(root=S, left=S, right=W)) == ["right"]


# --- job outcome ----------------------------------------------------------------------------------


def test_outcome_all_succeeded():
    assert job_outcome(statuses(S, S, S, S)) == JobStatus.SUCCEEDED


@pytest.mark.parametrize("others", [(S, S, S), (R, W, W), (S, C, W), (Q, R, W)])
def test_outcome_any_failed(others):
    left, right, join = others
    assert job_outcome(statuses(F, left, right, join)) == JobStatus.FAILED
    assert job_outcome(statuses(S, left, F, join)) == JobStatus.FAILED


@pytest.mark.parametrize("others", [(C, C, C), (S, C, W), (S, S, C), (C, Q, W)])
def test_outcome_canceled(others):
    left, right, join = others
    assert job_outcome(statuses(S, left, right, join)) == JobStatus.CANCELED


def test_canceled_waits_for_running_stage():
    assert job_outcome(statuses(S, C, R, W)) is None


@pytest.mark.parametrize(
    "current",
    [statuses(), statuses(R), statuses(Q), statuses(S, S, R), statuses(S, S, S, W), statuses(S, S, S, R)],
)
def test_outcome_in_progress(current):
    assert job_outcome(current) is None


def test_final_sets():
    assert {s for s in JobStatus if s.final} == set(FINAL_JOB) == {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                                  JobStatus.CANCELED}
    assert {s for s in RunStatus if s.final} == set(FINAL_RUN)
    assert not RunStatus.WAITING.final and not RunStatus.RUNNING.final


# --- outputs and inputs ---------------------------------------------------------------------------


def test_job_outputs(diamond):
    runs = {"root": {"text": "r"}, "left": {"text": "L"}, "right": {"text": "R"}, "join": {"text": "J"}}
    assert job_outputs(diamond, runs) == {"left": "L", "text": "J"}


def test_job_outputs_leave_out_stages_that_did_not_run(diamond):
    assert job_outputs(diamond, {"left": {"text": "L"}}) == {"left": "L"}


def test_resolve_inputs_from_job(diamond):
    assert resolve_inputs(diamond, "root", {"prompt": "p"}, {}) == {"prompt": "p"}


def test_resolve_inputs_fan_in_from_upstream_outputs(diamond):
    runs = {"root": {"text": "r"}, "left": {"text": "L"}, "right": {"text": "R"}}
    assert resolve_inputs(diamond, "join", {"prompt": "p"}, runs) == {"prompt": "L", "system": "R"}
    assert resolve_inputs(diamond, "left", {"prompt": "p"}, runs) == {"prompt": "r"}


def test_resolve_inputs_mixes_job_and_upstream(draft_rewrite):
    job = {"prompt": "p", "instructions": "be short"}
    runs = {"draft": {"text": "draft text", "usage": {}}}
    assert resolve_inputs(draft_rewrite, "rewrite", job, runs) == {"prompt": "draft text", "system": "be short"}
    assert resolve_inputs(draft_rewrite, "draft", job, runs) == {"prompt": "p"}


def test_resolve_inputs_job_ref_uses_input_name_not_upstream_stage(draft_rewrite):
    # A job input and an upstream stage output sharing a name must not be confused.
    job = {"prompt": "job prompt", "instructions": "i"}
    runs = {"draft": {"text": "t"}, "job": {"prompt": "wrong", "instructions": "wrong"}}
    assert resolve_inputs(draft_rewrite, "rewrite", job, runs) == {"prompt": "t", "system": "i"}


# --- retry ----------------------------------------------------------------------------------------


def test_retryable_error_retried_with_exponential_backoff():
    policy = RetryPolicy(backoff_s=2.0, backoff_max_s=300.0)
    delays = [policy.decide(RetryableStageError("x"), attempt, 10).delay_s for attempt in range(1, 6)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert policy.decide(RetryableStageError("x"), 1, 10) == RetryDecision(retry=True, delay_s=2.0)


def test_backoff_capped():
    policy = RetryPolicy(backoff_s=1.0, backoff_max_s=5.0)
    delays = [policy.decide(RetryableStageError("x"), attempt, 100).delay_s for attempt in (3, 4, 5, 50, 99)]
    assert delays == [4.0, 5.0, 5.0, 5.0, 5.0]


@pytest.mark.parametrize("error", [RetryableStageError("x"), StageError("x"), EngineDead("x"), RuntimeError("x")])
def test_retryable_kinds(error):
    assert RetryPolicy().decide(error, 1, 3).retry is True


def test_fatal_not_retried():
    decision = RetryPolicy().decide(FatalStageError("bad input"), 1, 3)
    assert decision == RetryDecision(retry=False)
    assert decision.delay_s == 0.0


@pytest.mark.parametrize("attempt,max_attempts", [(3, 3), (1, 1), (4, 3)])
def test_last_attempt_not_retried(attempt, max_attempts):
    assert RetryPolicy().decide(RetryableStageError("x"), attempt, max_attempts).retry is False


def test_second_to_last_attempt_retried():
    assert RetryPolicy().decide(RetryableStageError("x"), 2, 3).retry is True


def test_error_record_codes():
    assert error_record(FatalStageError("model said no")) == {
        "code": "fatal",
        "type": "FatalStageError",
        "message": "model said no",
    }
    assert error_record(RetryableStageError("oom"))["code"] == "retryable"
    assert error_record(EngineDead("gone"))["code"] == "retryable"
    assert error_record(RuntimeError("boom")) == {"code": "stage_error", "type": "RuntimeError", "message": "boom"}


def test_error_record_empty_message_uses_type_name():
    assert error_record(ValueError())["message"] == "ValueError"


# --- run_if ---------------------------------------------------------------------------------------

SPOKEN = {
    "name": "spoken",
    "inputs": {"prompt": {"type": "text"}, "modalities": {"type": "json", "required": False, "default": ["text"]}},
    "outputs": {"text": "think.text", "speech": "voice.text"},
    "stages": {
        "think": {"engine": "tests.fixtures.engines:ECHO", "inputs": {"prompt": "job.prompt"}},
        "talk": {"engine": "tests.fixtures.engines:ECHO", "inputs": {"prompt": "think.text"},
                 "run_if": {"input": "modalities", "contains": "audio"}},
        "voice": {"engine": "tests.fixtures.engines:ECHO", "inputs": {"prompt": "talk.text"}},
    },
}


@pytest.fixture(scope="module")
def spoken():
    return parse(yaml.safe_dump(SPOKEN))


def test_run_if_false_skips_the_stage_and_everything_downstream(spoken):
    from omnijobs.orchestrator import skipped_stages

    assert skipped_stages(spoken, {"modalities": ["text"]}) == {"talk", "voice"}
    assert skipped_stages(spoken, {"modalities": ["text", "audio"]}) == set()
    assert skipped_stages(spoken, {}) == {"talk", "voice"}


def test_skipped_stages_count_as_done(spoken):
    done = {"think": RunStatus.SUCCEEDED, "talk": RunStatus.SKIPPED, "voice": RunStatus.SKIPPED}
    assert job_outcome(done) == JobStatus.SUCCEEDED
    assert job_outputs(spoken, {"think": {"text": "t"}}) == {"text": "t"}


def test_run_if_must_name_a_job_input():
    from omnijobs.errors import SpecError

    bad = {**SPOKEN, "stages": {**SPOKEN["stages"], "talk": {
        **SPOKEN["stages"]["talk"], "run_if": {"input": "nope", "contains": "audio"}}}}
    with pytest.raises(SpecError, match="run_if names no input"):
        parse(yaml.safe_dump(bad))
    every_root_conditional = {**SPOKEN, "stages": {**SPOKEN["stages"], "think": {
        **SPOKEN["stages"]["think"], "run_if": {"input": "modalities", "contains": "text"}}}}
    with pytest.raises(SpecError, match="unconditionally"):
        parse(yaml.safe_dump(every_root_conditional))


def test_a_streamed_stage_is_ready_once_its_upstream_runs():
    spec = load_file(FIXTURES / "streamed.yaml")
    assert spec.stages["b"].streamed_upstream == {"a"}
    assert newly_ready(spec, {"a": Q, "b": W}) == []
    assert newly_ready(spec, {"a": R, "b": W}) == ["b"]
    assert newly_ready(spec, {"a": S, "b": W}) == ["b"]
    # Not streamed: the same graph waits for the upstream to succeed.
    plain = load_file(FIXTURES / "chain.yaml")
    assert newly_ready(plain, {"a": R, "b": W, "c": W}) == []
    # Downstream done first: the job still waits for the upstream's result.
    assert job_outcome({"a": R, "b": S}) is None


def test_streams_must_name_an_input_fed_by_a_stage():
    text = (FIXTURES / "streamed.yaml").read_text().replace("streams: {prompt:", "streams: {other:")
    with pytest.raises(Exception, match="streams.other"):
        parse(text, "streamed")


def test_a_streamed_edge_needs_engines_that_write_and_read_it_as_a_stream():
    text = (FIXTURES / "streamed.yaml").read_text()
    # An engine that reads its input only once the upstream has ended: a stream would never be read.
    reader = text.replace("engine: tests.fixtures.engines:STREAMED_ECHO\n    inputs: {prompt: a.text}",
                          "engine: tests.fixtures.engines:ECHO\n    inputs: {prompt: a.text}")
    assert reader != text
    with pytest.raises(Exception, match="cannot read input 'prompt' as a stream"):
        parse(reader, "streamed")
    # An upstream that writes no chunks: the reader would wait for ever.
    writer = text.replace("engine: tests.fixtures.engines:STREAMED_ECHO\n    inputs: {prompt: job.prompt}",
                          "engine: tests.fixtures.engines:ECHO\n    inputs: {prompt: job.prompt}")
    assert writer != text
    with pytest.raises(Exception, match="does not write 'text' as a stream"):
        parse(writer, "streamed")
