"""Processor pieces and hand-off files the Qwen multimodal stage folders share."""

from __future__ import annotations

import json
from pathlib import Path

MEL_BINS = 80


def save_media_processors(out: Path, patch_size: int = 14, merge_size: int = 2) -> None:
    """Image processor and audio feature extractor, each in its own subfolder (both use the same file name)."""
    from transformers import Qwen2VLImageProcessorPil, WhisperFeatureExtractor

    Qwen2VLImageProcessorPil(
        patch_size=patch_size, merge_size=merge_size, temporal_patch_size=2,
        # Keep tiny images tiny: a 56x56 image is 16 patches, 4 tokens after the 2x2 merge.
        min_pixels=(patch_size * merge_size) ** 2, max_pixels=(patch_size * merge_size) ** 2 * 16,
    ).save_pretrained(out / "image_processor")
    WhisperFeatureExtractor(feature_size=MEL_BINS, sampling_rate=16000).save_pretrained(out / "feature_extractor")


def write_handoff(out: Path, tokenizer, names: dict[str, str]) -> None:
    """Which of the thinker's token embeddings the next stage needs (it has no copy of the thinker's table)."""
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in names.items()}
    (out / "handoff.json").write_text(json.dumps({"embed_tokens": ids}, indent=1))
