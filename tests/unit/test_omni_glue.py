"""The thinker → talker hand-off layout and the talker's batch padding, on synthetic tensors."""

from types import SimpleNamespace

import pytest
import torch

from omnijobs.engines.omni_glue import qwen2_5_talker_row
from omnijobs.engines.talker import collate, talker_sampling
from omnijobs.errors import FatalStageError

D = 4
TALKER = SimpleNamespace(codec_mask_token=95, codec_pad_token=92, codec_bos_token=93, text_bos_token=300,
                         text_eos_token=301)


def bundle(n_prompt: int, n_reply: int, media_at=()) -> dict[str, torch.Tensor]:
    mm = torch.zeros(n_prompt, dtype=torch.bool)
    mm[list(media_at)] = True
    return {
        "prompt_ids": torch.arange(n_prompt),
        "prompt_embeds": torch.full((n_prompt, D), 1.0),
        "prompt_hidden": torch.full((n_prompt, D), 10.0),
        "prompt_mm_mask": mm,
        "prompt_user_mask": torch.ones(n_prompt, dtype=torch.bool),
        "reply_ids": torch.arange(100, 100 + n_reply),
        "reply_embeds": torch.arange(n_reply).float().unsqueeze(1).expand(n_reply, D).clone(),
        "reply_hidden": torch.full((n_reply, D), 1000.0),
        "embed.tts_text_eod": torch.full((D,), -1.0),
        "embed.tts_pad": torch.full((D,), -2.0),
        "embed.speaker.Chelsie": torch.full((D,), -3.0),
    }


def test_qwen2_5_layout_prompt_speaker_first_token_then_the_rest_of_the_reply():
    row = qwen2_5_talker_row(bundle(5, 3, media_at=[1, 2]), "Chelsie", TALKER)
    # Prefill: the prompt (hidden + embeddings, media embeddings blanked), the speaker, reply token 0.
    assert row.embeds.shape == (7, D)
    assert row.embeds[0, 0] == 11.0 and row.embeds[1, 0] == 10.0 and row.embeds[2, 0] == 10.0
    assert row.embeds[5, 0] == -3.0 and row.embeds[6, 0] == 1000.0
    assert row.ids.tolist() == [95] * 5 + [92, 93]
    assert row.text_ids.tolist() == [0, 1, 2, 3, 4, 300, 100]
    # One vector per generated code: reply tokens 1 and 2, then end of text, then padding.
    assert row.text[:, 0].tolist() == [1001.0, 1002.0, -1.0, -2.0]


def test_an_empty_reply_speaks_just_the_end_of_text():
    row = qwen2_5_talker_row(bundle(3, 0), "Chelsie", TALKER)
    assert row.embeds[-1, 0] == -1.0 and row.text_ids[-1] == 301


def test_a_bundle_without_the_speaker_or_states_fails_the_row():
    with pytest.raises(FatalStageError, match="embed.speaker.Ethan"):
        qwen2_5_talker_row(bundle(3, 2), "Ethan", TALKER)
    incomplete = bundle(3, 2)
    del incomplete["reply_hidden"]
    with pytest.raises(FatalStageError, match="reply_hidden"):
        qwen2_5_talker_row(incomplete, "Chelsie", TALKER)


def test_collate_left_pads_prefills_and_right_pads_text_with_each_rows_pad():
    rows = [qwen2_5_talker_row(bundle(2, 4), "Chelsie", TALKER), qwen2_5_talker_row(bundle(5, 1), "Chelsie", TALKER)]
    enc = collate(rows, codec_pad=92, device="cpu")
    assert enc["inputs_embeds"].shape == (2, 7, D)
    assert enc["attention_mask"].tolist() == [[0, 0, 0, 1, 1, 1, 1], [1] * 7]
    assert enc["input_ids"][0, :3].tolist() == [92, 92, 92]
    assert torch.equal(enc["inputs_embeds"][0, 3:], rows[0].embeds)
    assert enc["text"].shape == (2, 5, D)
    assert enc["text"][1, :, 0].tolist() == [-1.0, -2.0, -2.0, -2.0, -2.0]


def test_talker_sampling_bounds():
    row = talker_sampling("r", {"max_tokens": 5, "min_tokens": 2, "seed": 3, "speaker": "x"})
    assert (row["max_tokens"], row["min_tokens"]) == (5, 2)
    with pytest.raises(FatalStageError, match="min_tokens"):
        talker_sampling("r", {"max_tokens": 2, "min_tokens": 3})
