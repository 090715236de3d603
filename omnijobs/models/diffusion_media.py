"""Tiny text-to-video (Wan 2.2, two experts) and text-to-audio (Stable Audio) pipelines of the real classes."""

from __future__ import annotations

from pathlib import Path

from omnijobs.models.tiny import builder

T5_DIM = 32
AUDIO_RATE = 8000


def train_t5_tokenizer(out: Path, vocab_size: int = 300):
    """A T5Tokenizer from a Unigram trained on the local corpus (no hub)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    from omnijobs.models.tokenizers import CORPUS

    special = ["<pad>", "</s>", "<unk>"]
    unigram = Tokenizer(models.Unigram())
    unigram.normalizer = normalizers.NFKC()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special, unk_token="<unk>")
    unigram.train_from_iterator(CORPUS * 4, trainer=trainer)
    vocab = _unigram_vocab(unigram)
    tokenizer = T5Tokenizer(
        vocab=vocab, extra_ids=0, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=128
    )
    tokenizer.save_pretrained(out)
    return tokenizer


def _unigram_vocab(unigram) -> list[tuple[str, float]]:
    import json

    return [(piece, float(score)) for piece, score in json.loads(unigram.to_str())["model"]["vocab"]]


@builder("tiny/wan2_2_t2v")
def build_wan22(out: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = train_t5_tokenizer(out / "tokenizer")
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=T5_DIM, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )

    def expert():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
            text_dim=T5_DIM, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
        )

    # Wan 2.2: a high-noise expert runs the steps above boundary_ratio, a low-noise one the rest.
    WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=expert(), transformer_2=expert(), boundary_ratio=0.875,
    ).save_pretrained(out)


@builder("tiny/stable_audio")
def build_stable_audio(out: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderOobleck,
        EDMDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioPipeline,
        StableAudioProjectionModel,
    )
    from transformers import T5Config, T5EncoderModel

    tokenizer = train_t5_tokenizer(out / "tokenizer")
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=T5_DIM, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    # hop of 4*8 samples at 8 kHz, 512 latent frames: up to 2.048 s of stereo audio.
    vae = AutoencoderOobleck(
        encoder_hidden_size=8, downsampling_ratios=[4, 8], decoder_channels=8, decoder_input_channels=4,
        audio_channels=2, channel_multiples=[1, 2], sampling_rate=AUDIO_RATE,
    )
    transformer = StableAudioDiTModel(
        sample_size=512, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        num_key_value_attention_heads=1, out_channels=4, cross_attention_dim=16, time_proj_dim=16,
        global_states_input_dim=32, cross_attention_input_dim=16,
    )
    projection = StableAudioProjectionModel(text_encoder_dim=T5_DIM, conditioning_dim=16, min_value=0, max_value=64)
    scheduler = EDMDPMSolverMultistepScheduler(
        solver_order=2, prediction_type="v_prediction", sigma_data=1.0, sigma_schedule="exponential",
    )
    StableAudioPipeline(
        vae=vae, text_encoder=text_encoder, projection_model=projection, tokenizer=tokenizer,
        transformer=transformer, scheduler=scheduler,
    ).save_pretrained(out)
