"""Talker rows of both omni families: batched (left-padded prefills) and their sampling state."""

from __future__ import annotations

from typing import Any

import torch

from omnijobs.engines.base import StageRequest
from omnijobs.engines.omni_glue import TalkerRow
from omnijobs.engines.sampling import sampling_row
from omnijobs.errors import FatalStageError


def collate(rows: list[TalkerRow], codec_pad: int, device: str) -> dict[str, torch.Tensor]:
    """Left-pad the prefills, right-pad the per-step text with each row's pad vector."""
    width = max(r.embeds.shape[0] for r in rows)
    steps = max(r.text.shape[0] for r in rows)
    dim = rows[0].embeds.shape[1]
    embeds = torch.zeros((len(rows), width, dim))
    ids = torch.full((len(rows), width), codec_pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    text = torch.zeros((len(rows), steps, rows[0].text.shape[1]))
    text_ids = torch.zeros((len(rows), width), dtype=torch.long) if rows[0].text_ids is not None else None
    for j, r in enumerate(rows):
        n = r.embeds.shape[0]
        embeds[j, width - n:] = r.embeds
        ids[j, width - n:] = r.ids
        mask[j, width - n:] = 1
        text[j, : r.text.shape[0]] = r.text
        text[j, r.text.shape[0]:] = r.pad
        if text_ids is not None:
            text_ids[j, width - n:] = r.text_ids
    out = {"inputs_embeds": embeds, "input_ids": ids, "attention_mask": mask, "text": text,
           "pad": torch.stack([r.pad for r in rows]).unsqueeze(1)}
    if text_ids is not None:
        out["text_ids"] = text_ids
    for key in ("image_grid_thw", "audio_feature_lengths"):
        parts = [r.extras[key] for r in rows if key in r.extras]
        if parts:
            out[key] = torch.cat(parts)
    return {k: v.to(device) for k, v in out.items()}


def talker_sampling(run_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """Per-row sampling state, as the LM engine keeps it, plus the row's minimum number of codes."""
    defaults = {"max_tokens": 64, "temperature": 0.9, "top_p": 0.8, "seed": None}
    row = sampling_row(StageRequest(run_id, {}, {**defaults, **{k: v for k, v in params.items() if k in defaults}}))
    row["min_tokens"] = int(params.get("min_tokens", 1))
    if row["min_tokens"] > row["max_tokens"]:
        raise FatalStageError(f"min_tokens {row['min_tokens']} exceeds max_tokens {row['max_tokens']}")
    return row
