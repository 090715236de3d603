"""Tiny Qwen2.5-Omni: thinker, talker and token2wav saved as three stage folders.

The stages share token ids (the talker reads the thinker's prompt ids for its positions), so one
builder writes all three from one tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from omnijobs.models.processors import MEL_BINS, save_media_processors, write_handoff
from omnijobs.models.tiny import builder, set_output_level

# Special tokens of the thinker's vocabulary; names follow the released tokenizer.
IMAGE, AUDIO, VIDEO = "<|IMAGE|>", "<|AUDIO|>", "<|VIDEO|>"
VISION_BOS, VISION_EOS, AUDIO_BOS, AUDIO_EOS = "<|vision_bos|>", "<|vision_eos|>", "<|audio_bos|>", "<|audio_eos|>"
TTS_TEXT_BOS, TTS_TEXT_EOD, TTS_TEXT_PAD = "<|tts_text_bos|>", "<|tts_text_eod|>", "<|tts_pad|>"
SPEAKERS = {"Chelsie": "<|spk_chelsie|>", "Ethan": "<|spk_ethan|>"}
SPECIAL = [IMAGE, AUDIO, VIDEO, VISION_BOS, VISION_EOS, AUDIO_BOS, AUDIO_EOS, TTS_TEXT_BOS, TTS_TEXT_EOD,
           TTS_TEXT_PAD, *SPEAKERS.values()]

TEXT_HIDDEN = 64
# Codec vocabulary of the talker; the last four ids are its control tokens.
CODEC_VOCAB = 96
CODEC_PAD, CODEC_BOS, CODEC_EOS, CODEC_MASK = 92, 93, 94, 95


@builder("tiny/qwen2_5_omni", version=2)
def build_qwen2_5_omni(out: Path) -> None:
    import torch
    from transformers import (
        Qwen2_5OmniTalkerConfig,
        Qwen2_5OmniTalkerForConditionalGeneration,
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniThinkerForConditionalGeneration,
        Qwen2_5OmniToken2WavConfig,
        Qwen2_5OmniToken2WavModel,
    )

    from omnijobs.models.tokenizers import train_qwen2_tokenizer

    thinker_dir, talker_dir, t2w_dir = out / "thinker", out / "talker", out / "token2wav"
    tok = train_qwen2_tokenizer(thinker_dir, vocab_size=512, extra_special=SPECIAL)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    vocab = len(tok)
    torch.manual_seed(0)
    token_ids = {
        "audio_token_index": ids[AUDIO], "image_token_index": ids[IMAGE], "video_token_index": ids[VIDEO],
        "audio_start_token_id": ids[AUDIO_BOS], "audio_end_token_id": ids[AUDIO_EOS],
        "vision_start_token_id": ids[VISION_BOS], "vision_end_token_id": ids[VISION_EOS],
    }
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]}
    thinker_config = Qwen2_5OmniThinkerConfig(
        audio_config={"num_mel_bins": MEL_BINS, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
                          "d_model": 32, "output_dim": TEXT_HIDDEN, "n_window": 50, "max_source_positions": 1500},
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": TEXT_HIDDEN,
                           "fullatt_block_indexes": [0], "window_size": 112, "patch_size": 14, "spatial_merge_size": 2,
                           "temporal_patch_size": 2},
        text_config={"vocab_size": vocab, "hidden_size": TEXT_HIDDEN, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 2048,
                         "rope_parameters": rope, "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
                         "pad_token_id": tok.pad_token_id,
                         # The text config's default ties lm_head to the embeddings, which vLLM
                         # then drops; the released checkpoint has its own lm_head.
                         "tie_word_embeddings": False},
        user_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
        **token_ids,
    )
    thinker = Qwen2_5OmniThinkerForConditionalGeneration(thinker_config)
    thinker.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    thinker.generation_config.pad_token_id = tok.pad_token_id
    thinker.save_pretrained(thinker_dir)
    save_media_processors(thinker_dir)
    write_handoff(thinker_dir, tok, {"tts_text_eod": TTS_TEXT_EOD, "tts_pad": TTS_TEXT_PAD,
                                     **{f"speaker.{name}": token for name, token in SPEAKERS.items()}})

    talker_config = Qwen2_5OmniTalkerConfig(
        vocab_size=CODEC_VOCAB, embedding_size=TEXT_HIDDEN, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
        max_position_embeddings=4096, rope_parameters=rope,
        tts_text_start_token_id=ids[TTS_TEXT_BOS], tts_text_end_token_id=ids[TTS_TEXT_EOD],
        tts_text_pad_token_id=ids[TTS_TEXT_PAD], tts_codec_start_token_id=CODEC_BOS,
        tts_codec_end_token_id=CODEC_EOS, tts_codec_pad_token_id=CODEC_PAD, tts_codec_mask_token_id=CODEC_MASK,
        spatial_merge_size=2, **token_ids,
    )
    Qwen2_5OmniTalkerForConditionalGeneration(talker_config).save_pretrained(talker_dir)

    enc_dim = 16
    t2w_config = Qwen2_5OmniToken2WavConfig(
        dit_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "ff_mult": 2, "emb_dim": 16,
                        "head_dim": 16, "num_embeds": CODEC_VOCAB, "mel_dim": 80, "enc_emb_dim": enc_dim, "enc_dim": 16,
                        "enc_channels": [32, 32, 32, 32, 96], "enc_attention_channels": 8, "enc_se_channels": 8,
                        "look_ahead_layers": [1], "look_backward_layers": [0], "block_size": 24, "repeats": 2,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
        bigvgan_config={"mel_dim": 80, "upsample_initial_channel": 128, "resblock_kernel_sizes": [3],
                            "resblock_dilation_sizes": [[1, 3, 5]], "upsample_rates": [5, 3, 2, 2, 2, 2],
                            "upsample_kernel_sizes": [11, 7, 4, 4, 4, 4]},
    )
    t2w = Qwen2_5OmniToken2WavModel(t2w_config).float().eval()
    speakers = {
        name: {"bos_token": tok.convert_tokens_to_ids(token), "cond": torch.randn(1, enc_dim),
               "ref_mel": torch.randn(1, 30, 80)}
        for name, token in SPEAKERS.items()
    }
    chelsie = speakers["Chelsie"]
    probe_codes = torch.randint(0, CODEC_VOCAB - 4, (1, 32))
    set_output_level(t2w.code2wav_bigvgan_model.conv_post,
                     lambda: t2w(probe_codes, conditioning=chelsie["cond"], reference_mel=chelsie["ref_mel"], num_steps=4))
    t2w.save_pretrained(t2w_dir)
    torch.save(speakers, t2w_dir / "spk_dict.pt")
