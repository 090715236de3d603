"""What each engine kind consumes and produces: data, so pipelines validate without torch."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngineKind:
    name: str
    # "module:Class", imported only inside the worker that hosts it.
    impl: str
    # The optional dependency group that provides the engine's packages.
    extra: str
    # port -> type; a trailing "?" marks an optional port.
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    # Ports the engine can read as a stream (a pipeline's `streams:`) and outputs it writes as one.
    streams_in: frozenset[str] = frozenset()
    streams_out: frozenset[str] = frozenset()

    def required_inputs(self) -> set[str]:
        return {p for p, t in self.inputs.items() if not t.endswith("?")}

    def input_type(self, port: str) -> str:
        return self.inputs[port].rstrip("?")


ENGINE_KINDS: dict[str, EngineKind] = {
    kind.name: kind
    for kind in [
        EngineKind(
            name="transformers_lm",
            impl="omnijobs.engines.transformers_lm:TransformersLMEngine",
            extra="transformers",
            inputs={"prompt": "text", "system": "text?", "history": "json?"},
            outputs={"text": "text", "token_ids": "tokens", "usage": "json"},
        ),
        # AR stages on vLLM: chat LMs, and Qwen2.5-VL with images. Workers pick it for the
        # transformers kinds it serves where vllm is installed (omnijobs.engines.choice).
        EngineKind(
            name="vllm",
            impl="omnijobs.engines.vllm.engine:VLLMEngine",
            extra="vllm",
            inputs={"prompt": "text", "system": "text?", "image": "image?", "image_2": "image?", "image_3": "image?"},
            outputs={"text": "text", "token_ids": "tokens", "usage": "json"},
        ),
        # The omni thinkers on vLLM (either family, by the checkpoint's model_type), with the same ports.
        EngineKind(
            name="vllm_omni_thinker",
            impl="omnijobs.engines.vllm.omni:VLLMOmniThinkerEngine",
            extra="vllm",
            inputs={"prompt": "text", "system": "text?", "image": "image?", "audio": "audio?", "modalities": "json?"},
            outputs={"text": "text", "token_ids": "tokens", "usage": "json", "hidden": "tensor"},
            # Written once the row's states are read (vLLM gives them at the end), as one piece.
            streams_out=frozenset({"hidden"}),
        ),
        # Omni models split into thinker → talker → code2wav; `hidden` carries the thinker's states.
        *[
            EngineKind(
                name=f"{family}_thinker",
                impl=f"omnijobs.engines.{module}:{cls}",
                extra="transformers",
                inputs={"prompt": "text", "system": "text?", "image": "image?", "audio": "audio?",
                        "modalities": "json?"},
                outputs={"text": "text", "token_ids": "tokens", "usage": "json", "hidden": "tensor"},
                streams_out=frozenset({"hidden"}),
            )
            for family, module, cls in [("qwen2_5_omni", "qwen_omni", "Qwen2_5OmniThinkerEngine"),
                                        ("qwen3_omni", "qwen3_omni", "Qwen3OmniThinkerEngine")]
        ],
        EngineKind(
            name="qwen2_5_omni_talker",
            impl="omnijobs.engines.qwen_omni:Qwen2_5OmniTalkerEngine",
            extra="transformers",
            inputs={"hidden": "tensor"},
            outputs={"codes": "tensor", "speaker": "text", "usage": "json"},
            streams_in=frozenset({"hidden"}),
            streams_out=frozenset({"codes", "speaker"}),
        ),
        EngineKind(
            name="qwen2_5_omni_token2wav",
            impl="omnijobs.engines.qwen_omni:Qwen2_5OmniToken2WavEngine",
            extra="transformers",
            inputs={"codes": "tensor", "speaker": "text?"},
            outputs={"audio": "audio", "usage": "json"},
            streams_in=frozenset({"codes", "speaker"}),
        ),
        EngineKind(
            name="qwen3_omni_talker",
            impl="omnijobs.engines.qwen3_omni:Qwen3OmniTalkerEngine",
            extra="transformers",
            inputs={"hidden": "tensor"},
            outputs={"codes": "tensor", "usage": "json"},
            streams_in=frozenset({"hidden"}),
            streams_out=frozenset({"codes"}),
        ),
        EngineKind(
            name="qwen3_omni_code2wav",
            impl="omnijobs.engines.qwen3_omni:Qwen3OmniCode2WavEngine",
            extra="transformers",
            inputs={"codes": "tensor"},
            outputs={"audio": "audio", "usage": "json"},
            streams_in=frozenset({"codes"}),
        ),
        EngineKind(
            name="qwen2_5_vl",
            impl="omnijobs.engines.qwen_vl:Qwen2_5_VLEngine",
            extra="transformers",
            inputs={"prompt": "text", "system": "text?", "image": "image?", "image_2": "image?", "image_3": "image?"},
            outputs={"text": "text", "token_ids": "tokens", "usage": "json"},
        ),
        # Diffusion (diffusers). Qwen-Image split in three: text encoder, DiT, VAE.
        EngineKind(
            name="qwen_image_encode",
            impl="omnijobs.engines.diffusion.qwen_image:QwenImageEncodeEngine",
            extra="diffusers",
            inputs={"prompt": "text"},
            outputs={"embeds": "tensor"},
        ),
        EngineKind(
            name="qwen_image_denoise",
            impl="omnijobs.engines.diffusion.qwen_image:QwenImageDenoiseEngine",
            extra="diffusers",
            inputs={"embeds": "tensor"},
            outputs={"latents": "tensor"},
        ),
        EngineKind(
            name="qwen_image_decode",
            impl="omnijobs.engines.diffusion.qwen_image:QwenImageDecodeEngine",
            extra="diffusers",
            inputs={"latents": "tensor"},
            outputs={"image": "image"},
        ),
        EngineKind(
            name="qwen_image_edit",
            impl="omnijobs.engines.diffusion.qwen_image_edit:QwenImageEditEngine",
            extra="diffusers",
            inputs={"image": "image", "prompt": "text"},
            outputs={"image": "image"},
        ),
        EngineKind(
            name="qwen_image_layered",
            impl="omnijobs.engines.diffusion.qwen_image_layered:QwenImageLayeredEngine",
            extra="diffusers",
            inputs={"image": "image", "prompt": "text"},
            outputs={"layers": "image"},
        ),
        EngineKind(
            name="diffusers_text_to_image",
            impl="omnijobs.engines.diffusion.generate:TextToImageEngine",
            extra="diffusers",
            inputs={"prompt": "text"},
            outputs={"image": "image"},
        ),
        EngineKind(
            name="diffusers_text_to_video",
            impl="omnijobs.engines.diffusion.generate:TextToVideoEngine",
            extra="diffusers",
            inputs={"prompt": "text"},
            outputs={"video": "video"},
        ),
        EngineKind(
            name="diffusers_text_to_audio",
            impl="omnijobs.engines.diffusion.generate:TextToAudioEngine",
            extra="diffusers",
            inputs={"prompt": "text"},
            outputs={"audio": "audio"},
        ),
    ]
}


def engine_kind(name: str) -> EngineKind | None:
    """A shipped kind by name, or a user's kind given as "<module>:<EngineKind attribute>"."""
    if name in ENGINE_KINDS:
        return ENGINE_KINDS[name]
    module_name, sep, attr = name.partition(":")
    if not sep:
        return None
    try:
        kind = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    return kind if isinstance(kind, EngineKind) else None
