"""A row's params as vLLM SamplingParams: each row keeps its own seed, length and stops."""

from __future__ import annotations

from typing import Any

from omnijobs.errors import FatalStageError


def sampling_params(params: dict[str, Any], stop_ids: list[int], prompt_logprobs: int | None = None):
    """SamplingParams for one row; the same defaults as the transformers engines (temperature 1, 16 tokens)."""
    from vllm import SamplingParams

    stop = params.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise FatalStageError("param 'stop' must be a string or a list of strings")
    ignore_eos = bool(params.get("ignore_eos", False))
    seed = params.get("seed")
    return SamplingParams(
        max_tokens=int(params.get("max_tokens", 16)),
        temperature=float(params.get("temperature", 1.0)),
        top_p=float(params.get("top_p", 1.0)),
        seed=int(seed) if seed is not None else None,
        stop=stop or None,
        # The model's end-of-turn ids end a row, as they do on transformers, unless the row ignores them.
        stop_token_ids=[] if ignore_eos else list(stop_ids),
        ignore_eos=ignore_eos,
        skip_special_tokens=True,
        prompt_logprobs=prompt_logprobs,
    )
