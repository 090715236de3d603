"""Tiny text-to-image and image-edit pipelines of the real diffusers classes, saved with `save_pretrained`.

Sizes follow the real models' structure (VAE downsampling by 8, 2x2 latent patches) so that the
same height/width rules apply; every width is a few dozen units.
"""

from __future__ import annotations

from pathlib import Path

from omnijobs.models.qwen_vl import HIDDEN, qwen_vl_encoder, save_qwen_vl_processor
from omnijobs.models.tiny import builder

LATENT_CHANNELS = 4


def _flow_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9)


def _qwen_vae(z_dim: int, **kwargs):
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(
        base_dim=8, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim, **kwargs,
    )


def _kl_vae(latent_channels: int = LATENT_CHANNELS, **kwargs):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 8, 8], layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=32, **kwargs,
    )


def _qwen_transformer(z_dim: int, **kwargs):
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(
        patch_size=2, in_channels=z_dim * 4, out_channels=z_dim, num_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=HIDDEN, axes_dims_rope=(4, 6, 6), **kwargs,
    )


def _save_qwen_family(out: Path, pipeline_cls, with_processor: bool, z_dim: int = LATENT_CHANNELS,
                      vae_kwargs: dict | None = None, **transformer_kwargs) -> None:
    import torch

    text_encoder, tokenizer = qwen_vl_encoder(out)
    torch.manual_seed(1)
    parts = {
        "scheduler": _flow_scheduler(), "vae": _qwen_vae(z_dim, **(vae_kwargs or {})),
        "text_encoder": text_encoder, "tokenizer": tokenizer, "transformer": _qwen_transformer(z_dim, **transformer_kwargs),
    }
    if with_processor:
        parts["processor"] = None
    pipeline_cls(**parts).save_pretrained(out)
    if with_processor:
        save_qwen_vl_processor(out, tokenizer, "processor")


@builder("tiny/qwen_image")
def build_qwen_image(out: Path) -> None:
    from diffusers import QwenImagePipeline

    _save_qwen_family(out, QwenImagePipeline, with_processor=False)


@builder("tiny/qwen_image_edit")
def build_qwen_image_edit(out: Path) -> None:
    from diffusers import QwenImageEditPipeline

    _save_qwen_family(out, QwenImageEditPipeline, with_processor=True)


@builder("tiny/qwen_image_layered")
def build_qwen_image_layered(out: Path) -> None:
    from diffusers import QwenImageLayeredPipeline

    # RGBA in and out; the DiT tells layers apart with a 3D (layer, h, w) rope and an RGB/RGBA flag.
    # NOTE: the pipeline takes a 4-channel input for latents already encoded, so z_dim must not be 4.
    _save_qwen_family(out, QwenImageLayeredPipeline, with_processor=True, z_dim=8, vae_kwargs={"input_channels": 4},
                      use_layer3d_rope=True, use_additional_t_cond=True)


@builder("tiny/z_image_turbo")
def build_z_image(out: Path) -> None:
    import torch
    from diffusers import ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from omnijobs.models.tokenizers import train_qwen2_tokenizer

    tokenizer = train_qwen2_tokenizer(out / "tokenizer")
    torch.manual_seed(0)
    text_encoder = Qwen3Model(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
    ))
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=LATENT_CHANNELS, dim=32, n_layers=2,
        n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=HIDDEN, axes_dims=[4, 6, 6],
        axes_lens=[1024, 64, 64],
    )
    # NOTE: the pad embeddings start as torch.empty: uninitialised memory would be saved as weights.
    with torch.no_grad():
        for name in ("x_pad_token", "cap_pad_token"):
            param = getattr(transformer, name, None)
            if param is not None:
                param.copy_(torch.randn_like(param) * 0.02)
    ZImagePipeline(
        scheduler=_flow_scheduler(), vae=_kl_vae(scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
    ).save_pretrained(out)


@builder("tiny/longcat_image")
def build_longcat_image(out: Path) -> None:
    import torch
    from diffusers import LongCatImagePipeline, LongCatImageTransformer2DModel

    text_encoder, tokenizer = qwen_vl_encoder(out)
    torch.manual_seed(2)
    # NOTE: the pipeline hard-codes 16 latent channels.
    transformer = LongCatImageTransformer2DModel(
        patch_size=1, in_channels=16 * 4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=HIDDEN, pooled_projection_dim=HIDDEN, axes_dims_rope=[4, 6, 6],
    )
    LongCatImagePipeline(
        scheduler=_flow_scheduler(), vae=_kl_vae(16, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=text_encoder, tokenizer=tokenizer, text_processor=None,
        transformer=transformer,
    ).save_pretrained(out)
    save_qwen_vl_processor(out, tokenizer, "text_processor")
