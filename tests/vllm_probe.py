"""Engine-level checks of the vLLM engine, run in the vLLM environment (.venv-vllm).

`python tests/vllm_probe.py` reads {"model": path, "checks": [...], ...} on stdin, runs the real
VLLMEngine on that model folder, and prints one JSON object of what it saw; the tests in
tests/integration/test_vllm_engine.py (in the main environment) judge it, and compare vLLM's
prompt logprobs with transformers' there.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path


def main() -> None:
    spec = json.load(sys.stdin)
    from omnijobs.engines.base import EngineContext, Media, StageRequest
    from omnijobs.engines.vllm.engine import VLLMEngine
    from omnijobs.pipelines.spec import StageSpec

    stage = StageSpec(name="probe", engine="vllm", model=spec["model"], batch={"max_size": 8},
                      engine_args={"max_model_len": 1024, "max_num_seqs": 8})
    engine = VLLMEngine(EngineContext(stage=stage, device="cpu", model_path=Path(spec["model"])))
    engine.load()
    image = Media(base64.b64decode(spec["image_b64"]), "image/png") if spec.get("image_b64") else None

    def req(run_id: str, prompt: str, **params) -> StageRequest:
        inputs = {"prompt": prompt}
        if image is not None:
            inputs["image"] = image
        return StageRequest(run_id, inputs, {"temperature": 1.0, **params})

    out: dict = {}
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
    out["image_token_id"] = engine.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    out["prompt_logprobs"] = [None] + [entry[ids[k + 1]].logprob for k, entry in enumerate(done.prompt_logprobs[1:])]
    out["refused"] = str(engine.add(req("huge", "x", max_tokens=5000)))
    engine.close()
    print("PROBE " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
