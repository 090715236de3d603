"""Qwen2.5-VL chat: image(s) + text → text, batched like the omni thinkers."""

from __future__ import annotations

from typing import ClassVar

from transformers import Qwen2_5_VLForConditionalGeneration

from omnijobs.engines.multimodal_lm import MultimodalLMEngine


class Qwen2_5_VLEngine(MultimodalLMEngine):
    model_class = Qwen2_5_VLForConditionalGeneration
    tokens: ClassVar[dict[str, str]] = {"image": "<|image_pad|>", "vision_start": "<|vision_start|>", "vision_end": "<|vision_end|>"}
