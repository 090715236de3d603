"""What vLLM is given for one request: prompt token ids, and the images of a vision stage.

Prompts are tokenized here, the same way the transformers engines build theirs, so both engines
see the same tokens for the same request (and a user's text never turns into control tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omnijobs.engines.base import Media, StageRequest
from omnijobs.errors import EngineDead, FatalStageError

VL_TOKENS = {"image": "<|image_pad|>", "vision_start": "<|vision_start|>", "vision_end": "<|vision_end|>"}
DEFAULT_SYSTEM = "You are a helpful assistant."


@dataclass
class Prompt:
    token_ids: list[int]
    images: list[Any] = field(default_factory=list)

    def for_vllm(self) -> dict[str, Any]:
        prompt: dict[str, Any] = {"prompt_token_ids": self.token_ids}
        if self.images:
            prompt["multi_modal_data"] = {"image": self.images}
        return prompt


class TextPrompts:
    """Chat LMs: the tokenizer's chat template (or plain text), with the stage's `prompt_template`."""

    def __init__(self, tokenizer, options: dict[str, Any]):
        self.tokenizer = tokenizer
        self.options = options

    def build(self, req: StageRequest) -> Prompt:
        template = self.options.get("prompt_template")
        user = template.format(**{k: v or "" for k, v in req.inputs.items()}) if template else req.inputs["prompt"]
        if not isinstance(user, str):
            raise FatalStageError(f"input 'prompt' must be text, got {type(user).__name__}")
        system = req.inputs.get("system")
        if self.tokenizer.chat_template and self.options.get("chat", True):
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": user}
            ]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = f"{system}\n\n{user}" if system else user
        return Prompt(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class ChatTokens:
    """Token ids of chat-template pieces, for prompt builders that assemble ids themselves."""

    tokenizer: Any

    def _token_id(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise EngineDead(f"the tokenizer lacks the special token {token}")
        return tid

    def _encode(self, text: str, user: bool = False) -> list[int]:
        # User text never turns into control tokens, whatever it contains.
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=user)["input_ids"]


class VisionPrompts(ChatTokens):
    """Qwen2.5-VL: system and user turns around one placeholder per image; vLLM expands each one."""

    def __init__(self, tokenizer, options: dict[str, Any]):
        self.tokenizer = tokenizer
        self.system = options.get("system_prompt", DEFAULT_SYSTEM)
        self.ids = {name: self._token_id(token) for name, token in VL_TOKENS.items()}
        self.im_start, self.im_end = self._token_id("<|im_start|>"), self._token_id("<|im_end|>")

    def build(self, req: StageRequest) -> Prompt:
        from omnijobs.engines.media_features import decode_image

        images = []
        for port, value in sorted(req.inputs.items()):
            if port.startswith("image") and value is not None:
                if not isinstance(value, Media):
                    raise FatalStageError(f"input '{port}' must be media, got {type(value).__name__}")
                images.append(decode_image(value, port))
        system = req.inputs.get("system") or self.system
        ids = [self.im_start, *self._encode(f"system\n{system}"), self.im_end, *self._encode("\n"),
               self.im_start, *self._encode("user\n")]
        for _ in images:
            ids += [self.ids["vision_start"], self.ids["image"], self.ids["vision_end"]]
        ids += [*self._encode(req.inputs.get("prompt") or "", user=True), self.im_end, *self._encode("\n"),
                self.im_start, *self._encode("assistant\n")]
        return Prompt(ids, images)


def prompt_builder(model_type: str, tokenizer, options: dict[str, Any]):
    """The builder for a checkpoint's `model_type` (config.json)."""
    if model_type in ("qwen2_5_vl", "qwen2_vl"):
        return VisionPrompts(tokenizer, options)
    return TextPrompts(tokenizer, options)
