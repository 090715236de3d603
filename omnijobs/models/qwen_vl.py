"""A tiny Qwen2.5-VL text encoder, tokenizer and processor: the prompt encoder of Qwen-Image and LongCat-Image."""

from __future__ import annotations

from pathlib import Path

VL_SPECIAL = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
HIDDEN = 32


def qwen_vl_encoder(out: Path):
    """A 2-layer Qwen2_5_VLForConditionalGeneration and its tokenizer (trained into `out/tokenizer`)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from omnijobs.models.tokenizers import train_qwen2_tokenizer

    tokenizer = train_qwen2_tokenizer(out / "tokenizer", extra_special=VL_SPECIAL)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in VL_SPECIAL}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": HIDDEN,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": None,
        },
        vision_config={
            "depth": 1, "hidden_size": 32, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": HIDDEN,
            "fullatt_block_indexes": [0], "window_size": 56,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config), tokenizer


def save_qwen_vl_processor(out: Path, tokenizer, component: str) -> None:
    """Save a Qwen2.5-VL processor's parts under `out/component` and name it in model_index.json."""
    import json

    from transformers import Qwen2VLImageProcessorPil

    # Small pixel bounds keep the condition image to a handful of vision tokens.
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(out / component)
    tokenizer.save_pretrained(out / component)
    index_path = out / "model_index.json"
    index = json.loads(index_path.read_text())
    index[component] = ["transformers", "Qwen2_5_VLProcessor"]
    index_path.write_text(json.dumps(index, indent=2))


def load_qwen_vl_processor(path: Path):
    """The processor from its image processor and tokenizer.

    NOTE: the Qwen2-VL processors insist on a video processor, which needs torchvision; image-only
    use does not, so this subclass leaves it out.
    """
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil, Qwen2VLProcessor

    class ImageOnlyProcessor(Qwen2VLProcessor):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

    return ImageOnlyProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(path), tokenizer=AutoTokenizer.from_pretrained(path)
    )
