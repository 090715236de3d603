"""What vLLM is given for one omni thinker request, and what the hand-off needs to know of it.

The turns are the transformers thinkers' (engines/multimodal_lm.py): system, then the user turn
with its image and audio, then the assistant header. vLLM takes one placeholder per image or clip
and expands it to the item's features; the image grid and the audio's frame count, which the
talker needs for its positions, come from the same processors the transformers thinkers use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from omnijobs.engines.base import Media, StageRequest
from omnijobs.engines.vllm.prompts import DEFAULT_SYSTEM, ChatTokens, Prompt
from omnijobs.errors import FatalStageError

AUDIO_RATE = 16000


@dataclass(frozen=True)
class Family:
    # Special tokens of the family's released tokenizer.
    tokens: dict[str, str]
    # The model_type and architecture of the released whole-model config, which vLLM serves the thinker of.
    model_type: str
    architecture: str


FAMILIES = {
    "qwen2_5_omni": Family(
        tokens={"image": "<|IMAGE|>", "vision_start": "<|vision_bos|>", "vision_end": "<|vision_eos|>",
                "audio": "<|AUDIO|>", "audio_start": "<|audio_bos|>", "audio_end": "<|audio_eos|>",
                "video": "<|VIDEO|>"},
        model_type="qwen2_5_omni", architecture="Qwen2_5OmniModel"),
    "qwen3_omni": Family(
        tokens={"image": "<|image_pad|>", "vision_start": "<|vision_start|>", "vision_end": "<|vision_end|>",
                "audio": "<|audio_pad|>", "audio_start": "<|audio_start|>", "audio_end": "<|audio_end|>",
                "video": "<|video_pad|>"},
        model_type="qwen3_omni_moe", architecture="Qwen3OmniMoeForConditionalGeneration"),
}
# config.json model_type -> family: split thinker folders and whole-model checkpoints.
MODEL_TYPES = {"qwen2_5_omni_thinker": "qwen2_5_omni", "qwen2_5_omni": "qwen2_5_omni",
               "qwen3_omni_moe_thinker": "qwen3_omni", "qwen3_omni_moe": "qwen3_omni"}


@dataclass
class OmniPrompt(Prompt):
    audios: list[Any] = field(default_factory=list)
    # Tokens before the user turn and after it (the assistant header): neither holds media, so
    # they are as many in vLLM's expanded prompt as here.
    head: int = 0
    tail: int = 0
    # image_grid_thw, audio_feature_lengths: what the talker reads beside the states.
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def for_vllm(self, extra_ids: list[int] | None = None) -> dict[str, Any]:
        prompt: dict[str, Any] = {"prompt_token_ids": self.token_ids + list(extra_ids or [])}
        media: dict[str, Any] = {}
        if self.images:
            media["image"] = self.images
        if self.audios:
            media["audio"] = [(samples, AUDIO_RATE) for samples in self.audios]
        if media:
            prompt["multi_modal_data"] = media
        return prompt


class OmniPrompts(ChatTokens):
    def __init__(self, family: str, tokenizer, model_path, options: dict[str, Any]):
        from transformers import Qwen2VLImageProcessorPil, WhisperFeatureExtractor

        self.tokenizer = tokenizer
        self.system = options.get("system_prompt", DEFAULT_SYSTEM)
        self.ids = {name: self._token_id(token) for name, token in FAMILIES[family].tokens.items()}
        self.im_start, self.im_end = self._token_id("<|im_start|>"), self._token_id("<|im_end|>")
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(_part(model_path, "image_processor"))
        self.feature_extractor = WhisperFeatureExtractor.from_pretrained(_part(model_path, "feature_extractor"))

    @property
    def media_ids(self) -> list[int]:
        """The placeholder ids the transformers thinkers mark as media in the hand-off (image, audio)."""
        return [self.ids["image"], self.ids["audio"]]

    def build(self, req: StageRequest) -> OmniPrompt:
        from omnijobs.engines.media_features import decode_image, decode_wav

        for port, value in req.inputs.items():
            if (port.startswith("image") or port == "audio") and value is not None and not isinstance(value, Media):
                raise FatalStageError(f"input '{port}' must be media, got {type(value).__name__}")
        images = [decode_image(v, port) for port, v in sorted(req.inputs.items())
                  if port.startswith("image") and v is not None]
        audio = req.inputs.get("audio")
        system = req.inputs.get("system") or self.system
        ids = [self.im_start, *self._encode(f"system\n{system}"), self.im_end, *self._encode("\n")]
        head = len(ids)
        ids += [self.im_start, *self._encode("user\n")]
        prompt = OmniPrompt(token_ids=[], images=images, head=head)
        if images:
            grid = self.image_processor(images=images, return_tensors="pt")["image_grid_thw"]
            prompt.extras["image_grid_thw"] = grid.long()
            ids += [self.ids["vision_start"], self.ids["image"], self.ids["vision_end"]] * len(images)
        if audio is not None:
            samples = decode_wav(audio, AUDIO_RATE)
            feats = self.feature_extractor(samples, sampling_rate=AUDIO_RATE, return_attention_mask=True,
                                           padding="longest", return_tensors="pt")
            prompt.extras["audio_feature_lengths"] = torch.tensor([int(feats["attention_mask"].sum())])
            prompt.audios.append(samples)
            ids += [self.ids["audio_start"], self.ids["audio"], self.ids["audio_end"]]
        ids += [*self._encode(req.inputs.get("prompt") or "", user=True), self.im_end, *self._encode("\n")]
        header = [self.im_start, *self._encode("assistant\n")]
        prompt.token_ids, prompt.tail = ids + header, len(header)
        return prompt


def _part(path, name: str):
    return path / name if (path / name).is_dir() else path
