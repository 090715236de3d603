"""The thinker → talker bundle from vLLM's states: the same tensors the transformers thinkers hand off.

transformers' hidden_states[k] is the input of decoder layer k (0 = the input embeddings with
the media features in place), and its last entry is the final norm's output; vLLM extracts the
same inputs but the last layer's before the norm, which is applied here with the checkpoint's
weight. `embed.<name>` rows (the talker's special embeddings, listed in handoff.json) are read
from the checkpoint's embedding table once.

NOTE: Qwen3-Omni adds deepstack visual features to the outputs of its first decoder layers at the
image positions; transformers records those outputs before the addition, vLLM after it. A
`hidden_layer` within those layers (the tiny build's 1; the released checkpoint reads 24, past
them) therefore hands off image states that include the features, where transformers' do not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from omnijobs.engines.vllm.omni_prompts import OmniPrompt
from omnijobs.engines.vllm.states import States
from omnijobs.errors import EngineDead

EMBED, NORM = "thinker.model.embed_tokens.weight", "thinker.model.norm.weight"


def state_layers(hidden_layer: int, num_layers: int) -> tuple[int, list[int]]:
    """(the layer the bundle's `*_hidden` come from, as 0..num_layers; the layers to extract)."""
    if not -(num_layers + 1) <= hidden_layer <= num_layers:
        raise EngineDead(f"option hidden_layer={hidden_layer} is outside the thinker's 0..{num_layers}")
    layer = hidden_layer % (num_layers + 1)
    return layer, sorted({0, layer})


@dataclass
class ThinkerWeights:
    """The few checkpoint tensors the bundle needs beside the states."""

    norm: torch.Tensor
    eps: float
    special: dict[str, torch.Tensor]

    @classmethod
    def read(cls, folder: Path, eps: float, special_ids: dict[str, int]) -> ThinkerWeights:
        from safetensors import safe_open

        files = _weight_files(folder, [EMBED, NORM])
        with safe_open(files[NORM], "pt") as f:
            norm = f.get_tensor(NORM).float()
        with safe_open(files[EMBED], "pt") as f:
            table = f.get_slice(EMBED)
            special = {name: table[tid:tid + 1][0].float() for name, tid in special_ids.items()}
        return cls(norm, float(eps), special)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        # As transformers' RMSNorm: normalized in float32, then scaled.
        hidden = hidden.float()
        variance = hidden.pow(2).mean(-1, keepdim=True)
        return self.norm * (hidden * torch.rsqrt(variance + self.eps))


def _weight_files(folder: Path, keys: list[str]) -> dict[str, Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        missing = [k for k in keys if k not in weight_map]
        if missing:
            raise EngineDead(f"{folder} lacks {', '.join(missing)}")
        return {k: folder / weight_map[k] for k in keys}
    single = folder / "model.safetensors"
    if not single.exists():
        raise EngineDead(f"{folder} has no safetensors weights")
    return dict.fromkeys(keys, single)


def bundle(states: States, n_reply: int, prompt: OmniPrompt, layer: int, layers: list[int], num_layers: int,
           media_ids: list[int], weights: ThinkerWeights) -> dict[str, torch.Tensor]:
    """One row's hand-off: prompt and reply states, masks, media extras and the special embeddings."""
    n_prompt = len(states.token_ids) - n_reply
    embeds = states.hidden[:, layers.index(0)].float()
    hidden = states.hidden[:, layers.index(layer)].float()
    if layer == num_layers:
        hidden = weights.final_norm(hidden)
    ids = torch.tensor(states.token_ids, dtype=torch.long)
    user = torch.zeros(n_prompt, dtype=torch.bool)
    user[prompt.head: n_prompt - prompt.tail] = True
    # Each its own copy: tensors sharing storage cannot be serialized one by one.
    out = {
        "prompt_ids": ids[:n_prompt].clone(),
        "prompt_embeds": embeds[:n_prompt].clone(),
        "prompt_hidden": hidden[:n_prompt].clone(),
        "prompt_mm_mask": torch.isin(ids[:n_prompt], torch.tensor(media_ids)),
        "prompt_user_mask": user,
        "reply_ids": ids[n_prompt:].clone(),
        "reply_embeds": embeds[n_prompt:].clone(),
        "reply_hidden": hidden[n_prompt:].clone(),
        **{k: v.clone() for k, v in prompt.extras.items()},
    }
    out.update({f"embed.{name}": row.clone() for name, row in weights.special.items()})
    return out
