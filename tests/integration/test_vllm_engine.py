"""The vLLM engine on the tiny models, against transformers.

The engine runs in the vLLM environment (tests/vllm_probe.py under .venv-vllm); its prompt
logprobs are compared here with transformers' forward pass on the same token ids, for every model
the engine serves. Per-row seeds, per-row max_tokens, incremental adds and aborts are checked on
the same engine.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys

import pytest

from tests.cluster import REPO

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
SERVED = ["tiny/qwen2", "tiny/qwen2_5_vl"]


def png() -> bytes:
    from PIL import Image

    image = Image.new("RGB", (56, 56), (200, 30, 30))
    for x in range(56):
        image.putpixel((x, x), (0, 255, 0))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module", params=SERVED)
def probe(request, models_dir, tmp_path_factory):
    assert VLLM_PYTHON.exists(), "the vLLM environment is missing: run tests/vllm_env.sh (tests/run.sh does)"
    folder = models_dir / request.param
    spec = {"model": str(folder)}
    if "vl" in request.param:
        spec["image_b64"] = base64.b64encode(png()).decode()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "VLLM_CACHE_ROOT": str(tmp_path_factory.mktemp("vllm-cache"))}
    proc = subprocess.run([str(VLLM_PYTHON), str(REPO / "tests" / "vllm_probe.py")], input=json.dumps(spec),
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    return request.param, folder, json.loads(lines[-1].removeprefix("PROBE "))


def test_per_row_seeds_give_the_same_tokens_in_a_batch_as_alone(probe):
    _, _, out = probe
    assert [r["token_ids"] for r in out["batch"]] == [r["token_ids"] for r in out["alone"]]
    assert [r["text"] for r in out["batch"]] == [r["text"] for r in out["alone"]]
    # Different seeds, different rows (the seed is not ignored).
    assert len({tuple(r["token_ids"][:3]) for r in out["batch"]}) > 1


def test_each_row_gets_its_own_max_tokens(probe):
    _, _, out = probe
    assert [r["usage"]["completion_tokens"] for r in out["batch"]] == out["max_tokens"]
    assert [len(r["token_ids"]) for r in out["batch"]] == out["max_tokens"]


def test_a_request_added_mid_run_ends_first_and_abort_stops_the_long_one(probe):
    _, _, out = probe
    c = out["continuous"]
    assert c["ended_first"] == ["short"]
    aborted = dict(c["aborted"])
    assert 0 < aborted["long"] < 200
    assert c["unfinished_after_abort"] is False


def test_a_prompt_over_the_context_fails_alone_naming_the_limit(probe):
    _, _, out = probe
    assert "exceeds the stage's 1024 positions" in out["refused"]


def test_prompt_logprobs_match_transformers(probe):
    import torch

    name, folder, out = probe
    ids = torch.tensor([out["prompt_token_ids"]])
    with torch.no_grad():
        if "vl" in name:
            from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

            from PIL import Image

            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder).eval()
            pix = Qwen2VLImageProcessorPil.from_pretrained(folder / "image_processor")(
                images=[Image.open(io.BytesIO(png())).convert("RGB")], return_tensors="pt")
            logits = model(input_ids=ids, pixel_values=pix["pixel_values"],
                           image_grid_thw=pix["image_grid_thw"]).logits
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(folder).eval()
            logits = model(input_ids=ids).logits
    logprobs = torch.log_softmax(logits[0, :-1].float(), dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    theirs = torch.tensor(out["prompt_logprobs"][1:])
    assert theirs.shape == logprobs.shape
    diff = (theirs - logprobs).abs()
    if "vl" not in name:
        assert diff.max() < 1e-4, diff.max()
        return
    # Text before the image matches as closely as the text model does; from the image on, vLLM's
    # vision tower (its own attention and rotary kernels) differs from transformers' by ~1e-3.
    first_image = out["prompt_token_ids"].index(out["image_token_id"])
    assert diff[: first_image - 1].max() < 1e-4, diff[: first_image - 1].max()
    assert diff.max() < 5e-3, diff.max()


def test_a_missing_vllm_fails_the_worker_at_start_naming_the_extra(settings_env):
    """In the main environment (no vllm), a worker told to use vLLM exits with the extra to install."""
    import importlib.util

    assert importlib.util.find_spec("vllm") is None
    env = {**os.environ, **settings_env, "PYTHONPATH": str(REPO), "OMNIJOBS_AR_ENGINE": "vllm"}
    proc = subprocess.run([sys.executable, "-m", "omnijobs", "worker", "--stage", "chat.generate"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "omnijobs[vllm]" in proc.stderr + proc.stdout
