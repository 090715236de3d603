"""The vLLM engine on the tiny models, against transformers.

The engine runs in the vLLM environment (tests/vllm_probe.py under .venv-vllm); its prompt
logprobs are compared here with transformers' forward pass on the same token ids, for every model
the engine serves. Per-row seeds, per-row max_tokens, incremental adds and aborts are checked on
the same engine. The omni thinkers' hand-off (the hidden states their talkers read) is compared
with the transformers thinkers' for the same prompt and greedy reply.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.cluster import REPO
from tests.conftest import ARTIFACTS

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
OMNI = ["tiny/qwen2_5_omni/thinker", "tiny/qwen3_omni/thinker"]
SERVED = ["tiny/qwen2", "tiny/qwen2_5_vl", *OMNI]
# Largest prompt logprob difference from the first media token on. Measured with a 56x56 image
# (+ 0.8 s of audio for the omni thinkers): Qwen2.5-VL ~1e-3, Qwen2.5-Omni 4.9e-5, Qwen3-Omni 4.8e-7
# (as before the media: its vision and audio towers agree with transformers' to 1e-7).
MEDIA_LOGPROB_TOLERANCE = {"tiny/qwen2_5_vl": 5e-3, "tiny/qwen2_5_omni/thinker": 5e-4, "tiny/qwen3_omni/thinker": 1e-5}


def png() -> bytes:
    from PIL import Image

    image = Image.new("RGB", (56, 56), (200, 30, 30))
    for x in range(56):
        image.putpixel((x, x), (0, 255, 0))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def wav() -> bytes:
    t = np.arange(int(0.8 * 16000)) / 16000
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.sin(2 * np.pi * 330 * t) * 16000).astype("<i2").tobytes())
    return buf.getvalue()


def thinker_stage(name: str):
    """The shipped pipeline's thinker stage for an omni model (its options: qwen3's hidden_layer)."""
    from omnijobs.pipelines import load_registry

    return load_registry().get(name.split("/")[1]).stages["thinker"]


def media_inputs(name: str) -> dict:
    from omnijobs.engines.base import Media

    inputs = {"image": Media(png(), "image/png")} if "vl" in name or "omni" in name else {}
    if "omni" in name:
        inputs["audio"] = Media(wav(), "audio/wav")
    return inputs


@functools.cache
def transformers_thinker(name: str, folder: Path):
    from omnijobs.engines.base import EngineContext
    from omnijobs.engines.qwen3_omni import Qwen3OmniThinkerEngine
    from omnijobs.engines.qwen_omni import Qwen2_5OmniThinkerEngine

    cls = Qwen3OmniThinkerEngine if "qwen3" in name else Qwen2_5OmniThinkerEngine
    engine = cls(EngineContext(stage=thinker_stage(name), device="cpu", model_path=folder))
    engine.load()
    return engine


@pytest.fixture(scope="module", params=SERVED)
def probe(request, models_dir, tmp_path_factory):
    assert VLLM_PYTHON.exists(), "the vLLM environment is missing: run tests/vllm_env.sh (tests/run.sh does)"
    folder = models_dir / request.param
    spec = {"model": str(folder)}
    for port, media in media_inputs(request.param).items():
        spec[f"{port}_b64"] = base64.b64encode(media.data).decode()
    if request.param in OMNI:
        spec["options"] = thinker_stage(request.param).options
        spec["out_dir"] = str(tmp_path_factory.mktemp("bundles"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           # As the e2e workers': vLLM inspects each model class once per cache (a subprocess, ~30 s).
           "VLLM_CACHE_ROOT": str(ARTIFACTS / "vllm-cache")}
    proc = subprocess.run([str(VLLM_PYTHON), str(REPO / "tests" / "vllm_probe.py")], input=json.dumps(spec),
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = json.loads(lines[-1].removeprefix("PROBE "))
    print(f"{request.param}: engine start {out['init_s']:.1f} s, peak RSS {out['rss_gb']:.2f} GiB")
    out["bundles"] = spec.get("out_dir")
    return request.param, folder, out


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
        if "omni" in name:
            from omnijobs.engines.base import StageRequest

            thinker = transformers_thinker(name, folder)
            row = thinker._row(StageRequest("lp", {"prompt": "score these tokens please", **media_inputs(name)}, {}))
            assert row["ids"] == out["prompt_token_ids"]
            logits = thinker.model(**thinker._collate([row])).logits
        elif "vl" in name:
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
    if "vl" not in name and "omni" not in name:
        assert diff.max() < 1e-4, diff.max()
        return
    # Text before the media matches as closely as the text model does; from the media on, vLLM's
    # vision and audio towers (their own attention and rotary kernels) differ from transformers'.
    first = min(out["prompt_token_ids"].index(t) for t in out["media_token_ids"] if t in out["prompt_token_ids"])
    print(f"{name}: prompt logprobs differ by {diff[: first - 1].max():.1e} before the media, {diff.max():.1e} in all")
    assert diff[: first - 1].max() < 1e-4, diff[: first - 1].max()
    assert diff.max() < MEDIA_LOGPROB_TOLERANCE[name], diff.max()


def test_a_missing_vllm_fails_the_worker_at_start_naming_the_extra(settings_env):
    """In the main environment (no vllm), a worker told to use vLLM exits with the extra to install."""
    import importlib.util

    assert importlib.util.find_spec("vllm") is None
    env = {**os.environ, **settings_env, "PYTHONPATH": str(REPO), "OMNIJOBS_AR_ENGINE": "vllm"}
    proc = subprocess.run([sys.executable, "-m", "omnijobs", "worker", "--stage", "chat.generate"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "omnijobs[vllm]" in proc.stderr + proc.stdout


# ---------------------------------------------------------------------------- the omni hand-off

# Largest difference of the vLLM thinker's hand-off from the transformers thinker's (absolute, float32),
# for the input embeddings and the hidden layer the talker reads, as (text positions, image/audio
# positions). Measured on the tiny models, 56x56 image + 0.8 s of audio, 6 greedy tokens:
#   Qwen2.5-Omni (last layer, final norm applied): embeds 0 / 2.2e-4, hidden 7.4e-5 / 2.0e-3
#     (states of magnitude up to 3.8; text-only prompt: hidden 6.1e-7)
#   Qwen3-Omni (layer 1): embeds 0 / 7.4e-8, hidden 1.4e-8 / 1.2e-7 once the deepstack offset is added
#     (states up to 0.09; the offset itself is up to 7.0e-2)
HANDOFF_TOLERANCE = {
    "tiny/qwen2_5_omni/thinker": {"embeds": (0.0, 1e-3), "hidden": (5e-4, 1e-2)},
    "tiny/qwen3_omni/thinker": {"embeds": (0.0, 1e-6), "hidden": (1e-6, 1e-6)},
}
EXACT = ("prompt_ids", "prompt_mm_mask", "prompt_user_mask", "reply_ids", "image_grid_thw", "audio_feature_lengths")


def deepstack_offset(name: str, folder: Path, inputs: dict, bundle) -> "torch.Tensor":
    """What vLLM's states hold beyond transformers' at each position: zero, but for Qwen3-Omni's images.

    Qwen3-Omni adds deepstack visual features to the outputs of its first decoder layers at the
    image positions; transformers records a layer's output before that addition, vLLM after it.
    The hand-off reads layer `hidden_layer` (the tiny build's 1, within the deepstack layers; the
    released checkpoint's 24, beyond them), so there the vLLM state is transformers' + the features.
    """
    import torch

    from omnijobs.engines.base import StageRequest

    n = len(bundle["prompt_ids"]) + len(bundle["reply_ids"])
    offset = torch.zeros((n, bundle["prompt_hidden"].shape[1]))
    thinker = transformers_thinker(name, folder)
    layer = int(thinker.ctx.stage.options.get("hidden_layer", -1))
    deepstack = getattr(thinker.model.config.vision_config, "deepstack_visual_indexes", [])
    if "image" not in inputs or not 1 <= layer <= len(deepstack):
        return offset
    row = thinker._row(StageRequest("features", inputs, {}))
    with torch.no_grad():
        features = thinker.model.get_image_features(row["pixel_values"], row["image_grid_thw"], return_dict=True)
    offset[: len(bundle["prompt_ids"])][bundle["prompt_ids"] == thinker.ids["image"]] = \
        torch.cat(features.deepstack_features[layer - 1]).float()
    return offset


@pytest.mark.parametrize("probe", OMNI, indirect=True)
@pytest.mark.parametrize("row", ["media", "text"])
def test_the_hand_off_matches_the_transformers_thinkers(probe, row):
    import torch
    from safetensors.torch import load_file

    from omnijobs.engines.base import StageRequest

    name, folder, out = probe
    vllm = load_file(Path(out["bundles"]) / f"{row}.safetensors")
    inputs = {"prompt": "hello there", **(media_inputs(name) if row == "media" else {})}
    result = transformers_thinker(name, folder).run([StageRequest(row, inputs, {"temperature": 0.0, "max_tokens": 6})])[0]
    assert result["token_ids"] == out["omni"]["token_ids"][row]
    ours = result["hidden"]
    assert sorted(ours) == sorted(vllm)
    for key in EXACT:
        if key in ours:
            assert torch.equal(ours[key], vllm[key]), key
    media = torch.cat([ours["prompt_mm_mask"], torch.zeros(len(ours["reply_ids"]), dtype=torch.bool)])
    offset = deepstack_offset(name, folder, inputs, ours)
    report = {"deepstack": float(offset.abs().max())}
    for part in ("embeds", "hidden"):
        a = torch.cat([ours[f"prompt_{part}"], ours[f"reply_{part}"]]) + (offset if part == "hidden" else 0)
        b = torch.cat([vllm[f"prompt_{part}"], vllm[f"reply_{part}"]])
        assert a.shape == b.shape and b.dtype == torch.float32
        diff = (a - b).abs().max(dim=-1).values
        text_tol, media_tol = HANDOFF_TOLERANCE[name][part]
        report[part] = (float(diff[~media].max()), float(diff[media].max()) if media.any() else 0.0)
        assert report[part][0] <= text_tol, (part, report)
        assert report[part][1] <= media_tol, (part, report)
    for key in (k for k in ours if k.startswith("embed.")):
        assert torch.equal(ours[key], vllm[key]), key
    print(f"{name} {row}: largest difference (text, media): {report}")


@pytest.mark.parametrize("probe", OMNI, indirect=True)
def test_a_text_only_row_skips_the_states_and_no_state_file_is_left(probe):
    _, _, out = probe
    assert out["omni"]["text_only_keys"] == ["text", "token_ids", "usage"]
    assert out["omni"]["aborted_midway"] == [["midway", ["text", "token_ids", "usage"]]]
    assert out["omni"]["state_files_left"] == []
