"""Tiny Qwen3-Omni (MoE): thinker, talker and code2wav saved as three stage folders."""

from __future__ import annotations

from pathlib import Path

from omnijobs.models.processors import MEL_BINS, save_media_processors, write_handoff
from omnijobs.models.tiny import builder, set_output_level

IMAGE, VIDEO, AUDIO = "<|image_pad|>", "<|video_pad|>", "<|audio_pad|>"
VISION_START, VISION_END, AUDIO_START, AUDIO_END = "<|vision_start|>", "<|vision_end|>", "<|audio_start|>", "<|audio_end|>"
TTS_PAD, TTS_BOS, TTS_EOS = "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>"
# The talker finds the user turn and the assistant header by these, so each must be one token.
ROLES = ["system", "user", "assistant"]
SPECIAL = [IMAGE, VIDEO, AUDIO, VISION_START, VISION_END, AUDIO_START, AUDIO_END, TTS_PAD, TTS_BOS, TTS_EOS, *ROLES]

HIDDEN = 64
# Talker vocabulary: codes below 64; the top 1024 ids are control tokens the talker never samples
# (except end-of-speech).
TALKER_VOCAB = 64 + 1024
CODEBOOK = 64
CODE_GROUPS = 4
CODEC_PAD, CODEC_BOS, CODEC_EOS, CODEC_NOTHINK, CODEC_THINK_BOS, CODEC_THINK_EOS = range(64, 70)
SPEAKERS = {"ethan": 70, "chelsie": 71}
# Which thinker layer the talker reads for media positions (hidden_states index: 0 = embeddings).
ACCEPT_HIDDEN_LAYER = 1


@builder("tiny/qwen3_omni", version=2)
def build_qwen3_omni(out: Path) -> None:
    import torch
    from transformers import (
        Qwen3OmniMoeCode2Wav,
        Qwen3OmniMoeTalkerConfig,
        Qwen3OmniMoeTalkerForConditionalGeneration,
        Qwen3OmniMoeThinkerConfig,
        Qwen3OmniMoeThinkerForConditionalGeneration,
    )
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import (
        Qwen3OmniMoeCode2WavConfig,
    )

    from omnijobs.models.tokenizers import train_qwen2_tokenizer

    thinker_dir, talker_dir, c2w_dir = out / "thinker", out / "talker", out / "code2wav"
    tok = train_qwen2_tokenizer(thinker_dir, vocab_size=512, extra_special=SPECIAL)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(0)
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6], "interleaved": True}
    # As in the released checkpoint: the thinker has no shared expert (vLLM builds one, unweighted,
    # for any other value, and its logits turn NaN); the talker's is twice an expert's width.
    moe = {"moe_intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2}
    thinker_moe = {**moe, "shared_expert_intermediate_size": 0}
    talker_moe = {**moe, "shared_expert_intermediate_size": 64}
    thinker_config = Qwen3OmniMoeThinkerConfig(
        audio_config={"num_mel_bins": MEL_BINS, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
                          "d_model": 32, "output_dim": HIDDEN, "n_window": 50, "n_window_infer": 100, "conv_chunksize": 50,
                          "downsample_hidden_size": 16, "max_source_positions": 1500},
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": HIDDEN,
                           "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 64,
                           "deepstack_visual_indexes": [0]},
        text_config=dict(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=2048,
                         rope_parameters=rope, eos_token_id=im_end, pad_token_id=tok.pad_token_id, **thinker_moe),
        audio_token_id=ids[AUDIO], image_token_id=ids[IMAGE], video_token_id=ids[VIDEO],
        audio_start_token_id=ids[AUDIO_START], vision_start_token_id=ids[VISION_START],
        audio_end_token_id=ids[AUDIO_END], vision_end_token_id=ids[VISION_END],
        user_token_id=ids["user"],
    )
    thinker = Qwen3OmniMoeThinkerForConditionalGeneration(thinker_config)
    thinker.generation_config.eos_token_id = im_end
    thinker.generation_config.pad_token_id = tok.pad_token_id
    thinker.save_pretrained(thinker_dir)
    save_media_processors(thinker_dir, patch_size=16)
    write_handoff(thinker_dir, tok, {"tts_bos": TTS_BOS, "tts_eos": TTS_EOS, "tts_pad": TTS_PAD})

    talker_config = Qwen3OmniMoeTalkerConfig(
        text_config=dict(vocab_size=TALKER_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=4096,
                         rope_parameters=rope, **talker_moe),
        code_predictor_config={"vocab_size": CODEBOOK, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
                                   "num_code_groups": CODE_GROUPS, "max_position_embeddings": 64},
        num_code_groups=CODE_GROUPS, thinker_hidden_size=HIDDEN, accept_hidden_layer=ACCEPT_HIDDEN_LAYER,
        codec_eos_token_id=CODEC_EOS, codec_nothink_id=CODEC_NOTHINK, codec_think_bos_id=CODEC_THINK_BOS,
        codec_think_eos_id=CODEC_THINK_EOS, codec_pad_id=CODEC_PAD, codec_bos_id=CODEC_BOS,
        audio_token_id=ids[AUDIO], image_token_id=ids[IMAGE], video_token_id=ids[VIDEO],
        vision_start_token_id=ids[VISION_START], audio_start_token_id=ids[AUDIO_START],
        speaker_id=SPEAKERS, spatial_merge_size=2,
    )
    Qwen3OmniMoeTalkerForConditionalGeneration(talker_config).save_pretrained(talker_dir)

    c2w_config = Qwen3OmniMoeCode2WavConfig(
        codebook_size=CODEBOOK, hidden_size=32, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
        num_hidden_layers=1, num_quantizers=CODE_GROUPS, sliding_window=16, max_position_embeddings=2048,
        upsample_rates=[8, 5, 4, 3], upsampling_ratios=[2, 2], decoder_dim=64,
    )
    c2w = Qwen3OmniMoeCode2Wav(c2w_config).eval()
    probe_codes = torch.randint(0, CODEBOOK, (1, CODE_GROUPS, 32))
    set_output_level(c2w.decoder[-1].conv, lambda: c2w(probe_codes))
    c2w.save_pretrained(c2w_dir)
