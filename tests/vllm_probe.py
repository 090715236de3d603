"""Engine-level checks of the vLLM engine, run in the vLLM environment (.venv-vllm).

`python tests/vllm_probe.py` reads {"model": path, "image_b64"?, "audio_b64"?, "options"?, "out_dir"?}
on stdin, runs the real VLLMEngine (VLLMOmniThinkerEngine on an omni thinker) on that model folder,
and prints one JSON object of what it saw; omni thinkers' hand-off bundles are written to out_dir.
The tests in tests/integration/test_vllm_engine.py (in the main environment) judge it, and compare
vLLM's prompt logprobs and hidden states with transformers' there.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import sys
import time
from pathlib import Path


def main() -> None:
    spec = json.load(sys.stdin)
    from omnijobs.engines.base import EngineContext, Media, StageRequest
    from omnijobs.engines.vllm.engine import VLLMEngine
    from omnijobs.engines.vllm.omni import VLLMOmniThinkerEngine
    from omnijobs.engines.vllm.omni_prompts import MODEL_TYPES
    from omnijobs.pipelines.spec import StageSpec

    omni = json.loads((Path(spec["model"]) / "config.json").read_text()).get("model_type") in MODEL_TYPES
    kind, cls = ("vllm_omni_thinker", VLLMOmniThinkerEngine) if omni else ("vllm", VLLMEngine)
    stage = StageSpec(name="probe", engine=kind, model=spec["model"], batch={"max_size": 8},
                      engine_args={"max_model_len": 1024, "max_num_seqs": 8}, options=spec.get("options", {}))
    engine = cls(EngineContext(stage=stage, device="cpu", model_path=Path(spec["model"])))
    started = time.monotonic()
    engine.load()
    out: dict = {"init_s": time.monotonic() - started}
    media = {port: Media(base64.b64decode(spec[f"{port}_b64"]), content_type)
             for port, content_type in (("image", "image/png"), ("audio", "audio/wav")) if spec.get(f"{port}_b64")}

    def req(run_id: str, prompt: str, **params) -> StageRequest:
        return StageRequest(run_id, {"prompt": prompt, **media}, {"temperature": 1.0, **params})

    rows = [req(f"r{i}", f"row {i} says", seed=100 + i, max_tokens=4 + 3 * i, ignore_eos=True) for i in range(4)]
    together = engine.run(rows)
    alone = [engine.run([r])[0] for r in rows]
    out["batch"] = [{"text": r["text"], "token_ids": r["token_ids"], "usage": r["usage"]} for r in together]
    out["alone"] = [{"text": r["text"], "token_ids": r["token_ids"]} for r in alone]
    out["max_tokens"] = [r.params["max_tokens"] for r in rows]

    # Continuous: a short request added while a long one runs ends first; an abort ends the long one.
    assert engine.add(req("long", "a long one", max_tokens=200, ignore_eos=True, seed=1)) is None
    for _ in range(3):
        engine.step()
    assert engine.add(req("short", "a short one", max_tokens=4, ignore_eos=True, seed=2)) is None
    order, steps = [], 0
    while "short" not in order:
        order += [r.run_id for r, _ in engine.step()]
        steps += 1
    aborted = engine.abort(["long"])
    out["continuous"] = {"ended_first": order, "steps_for_short": steps,
                         "aborted": [(r.run_id, res["usage"]["completion_tokens"]) for r, res in aborted],
                         "unfinished_after_abort": engine.llm.has_unfinished_requests()}

    # Prompt logprobs of fixed token ids (the test computes transformers' for the same ids).
    from vllm import SamplingParams

    prompt = engine.prompts.build(req("lp", spec.get("logprob_prompt", "score these tokens please")))
    engine.llm.add_request("lp", prompt.for_vllm(), SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0))
    done = None
    while done is None:
        done = next((o for o in engine.llm.step() if o.request_id == "lp" and o.finished), None)
    ids = list(done.prompt_token_ids)
    out["prompt_token_ids"] = ids
    out["media_token_ids"] = (engine.prompts.media_ids if omni
                              else [engine.tokenizer.convert_tokens_to_ids("<|image_pad|>")])
    out["prompt_logprobs"] = [None] + [entry[ids[k + 1]].logprob for k, entry in enumerate(done.prompt_logprobs[1:])]
    out["refused"] = str(engine.add(req("huge", "x", max_tokens=5000)))
    if omni:
        out["omni"] = omni_checks(engine, media, Path(spec["out_dir"]))
    out["rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    engine.close()
    print("PROBE " + json.dumps(out), flush=True)


def omni_checks(engine, media: dict, out_dir: Path) -> dict:
    """The hand-off: bundles of greedy replies (the test compares them with transformers'), a text-only
    row, an abort while a row's states are being prefilled, and the state files left behind."""
    from safetensors.torch import save_file

    from omnijobs.engines.base import StageRequest

    found: dict = {}
    engine.add(StageRequest("midway", {"prompt": "abort me", **media}, {"max_tokens": 3, "ignore_eos": True}))
    while "midway" not in engine.handing:
        engine.step()
    found["aborted_midway"] = [(r.run_id, sorted(res)) for r, res in engine.abort(["midway"])]
    greedy = {"temperature": 0.0, "max_tokens": 6}
    rows = [StageRequest("media", {"prompt": "hello there", **media}, greedy),
            StageRequest("text", {"prompt": "hello there"}, greedy),
            StageRequest("text_only", {"prompt": "no speech", **media, "modalities": ["text"]}, greedy)]
    results = {r.run_id: res for r, res in zip(rows, engine.run(rows), strict=True)}
    for name in ("media", "text"):
        save_file(results[name]["hidden"], out_dir / f"{name}.safetensors")
    found["token_ids"] = {name: res["token_ids"] for name, res in results.items()}
    found["text_only_keys"] = sorted(results["text_only"])
    found["state_files_left"] = sorted(os.listdir(engine.states.dir))
    return found


if __name__ == "__main__":
    main()
