"""Tiny Qwen2.5-VL chat model: image(s) + text → text, one stage folder."""

from __future__ import annotations

from pathlib import Path

from omnijobs.models.processors import save_media_processors
from omnijobs.models.tiny import builder

IMAGE, VIDEO, VISION_START, VISION_END = "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"


@builder("tiny/qwen2_5_vl")
def build_qwen2_5_vl(out: Path) -> None:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from omnijobs.models.tokenizers import train_qwen2_tokenizer

    tok = train_qwen2_tokenizer(out, vocab_size=512, extra_special=[IMAGE, VIDEO, VISION_START, VISION_END])
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 2048,
                         "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
                         "eos_token_id": im_end, "pad_token_id": tok.pad_token_id, "bos_token_id": None},
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                           "fullatt_block_indexes": [0], "window_size": 112, "patch_size": 14, "spatial_merge_size": 2,
                           "temporal_patch_size": 2},
        image_token_id=tok.convert_tokens_to_ids(IMAGE), video_token_id=tok.convert_tokens_to_ids(VIDEO),
        vision_start_token_id=tok.convert_tokens_to_ids(VISION_START),
        vision_end_token_id=tok.convert_tokens_to_ids(VISION_END),
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = im_end
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    save_media_processors(out, patch_size=14)
