"""Thinker → talker hand-off of the Qwen omni families: one thinker row's states → talker inputs.

This is the part of the full models' `generate` that sits between their stages, per row and
unpadded, so the talker stage can batch rows from different jobs. The bundle comes from
`MultimodalLMEngine._handoff`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from omnijobs.errors import FatalStageError

BUNDLE_KEYS = ("prompt_ids", "prompt_embeds", "prompt_hidden", "prompt_mm_mask", "prompt_user_mask", "reply_ids",
               "reply_embeds", "reply_hidden")


@dataclass
class TalkerRow:
    """One row of talker input. `embeds` and `ids` are the prefill; `text` feeds one step each."""

    embeds: torch.Tensor  # (L, D)
    ids: torch.Tensor  # (L,) codec ids (Qwen2.5) or thinker ids for the positions (Qwen3)
    text: torch.Tensor  # (R, D): the reply, consumed one vector per generated code
    pad: torch.Tensor  # (D,): what a step gets once `text` runs out
    text_ids: torch.Tensor | None = None  # (L,) thinker-vocabulary ids for the rope index (Qwen2.5)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # image_grid_thw, audio_feature_lengths
    eos: torch.Tensor | None = None  # (D,): what ends `text` (Qwen3: tts-eos), for a row whose text streams in


def handoff_bundle(req) -> dict[str, torch.Tensor]:
    """A talker request's recorded hand-off (its `hidden` input)."""
    bundle = req.inputs.get("hidden")
    if not isinstance(bundle, dict):
        raise FatalStageError(f"input 'hidden' must be the thinker's tensor bundle, got {type(bundle).__name__}")
    return bundle


def check_bundle(bundle: dict[str, torch.Tensor], needs: list[str]) -> None:
    missing = [k for k in (*BUNDLE_KEYS, *needs) if k not in bundle]
    if missing:
        raise FatalStageError(f"thinker hand-off lacks {', '.join(missing)} (is the thinker stage `handoff: true`?)")


def _extras(bundle: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: bundle[k] for k in ("image_grid_thw", "audio_feature_lengths") if k in bundle}


def qwen2_5_talker_row(bundle: dict[str, torch.Tensor], speaker: str, talker, complete: bool = True) -> TalkerRow:
    """Qwen2.5-Omni: prompt (last hidden + input embeddings, media positions blanked), the speaker's
    text-bos, the first reply token; the rest of the reply, text-eos and text-pad feed later steps.

    `complete=False`: the reply is still being written (at least its first token is there); the
    row's text then ends with what came, `qwen2_5_text_states` gives the rest as it comes, and the
    row's `eos` (text-eos) ends it, text-pad after it as always."""
    speaker_key = f"embed.speaker.{speaker}"
    check_bundle(bundle, [speaker_key, "embed.tts_text_eod", "embed.tts_pad"])
    embeds = bundle["prompt_embeds"].masked_fill(bundle["prompt_mm_mask"].unsqueeze(-1), 0.0)
    prompt = bundle["prompt_hidden"] + embeds
    eos, pad = bundle["embed.tts_text_eod"], bundle["embed.tts_pad"]
    reply = qwen2_5_text_states(bundle["reply_hidden"], bundle["reply_embeds"])
    reply_ids = bundle["reply_ids"]
    if reply.shape[0] == 0:  # the thinker said nothing: speak just the end of text
        reply, reply_ids = eos.unsqueeze(0), torch.tensor([talker.text_eos_token])
    n = prompt.shape[0]
    return TalkerRow(
        embeds=torch.cat([prompt, bundle[speaker_key].unsqueeze(0), reply[:1]]),
        ids=torch.cat([torch.full((n,), talker.codec_mask_token),
                       torch.tensor([talker.codec_pad_token, talker.codec_bos_token])]).long(),
        text_ids=torch.cat([bundle["prompt_ids"], torch.tensor([talker.text_bos_token]), reply_ids[:1]]).long(),
        text=torch.cat([reply[1:], eos.unsqueeze(0), pad.unsqueeze(0)]) if complete else reply[1:],
        pad=pad,
        eos=eos,
        extras=_extras(bundle),
    )


def qwen2_5_text_states(reply_hidden: torch.Tensor, reply_embeds: torch.Tensor) -> torch.Tensor:
    """The talker's text states of reply tokens (n, D): the thinker's last hidden state plus the
    token's input embedding (the talker projects them itself)."""
    return reply_hidden + reply_embeds


def qwen3_text_states(reply_embeds: torch.Tensor, talker) -> torch.Tensor:
    """The talker's text states for more reply tokens (n, D) of a row whose reply streams in."""
    with torch.no_grad():
        return talker.text_projection(reply_embeds.float()).float()


def qwen3_talker_row(bundle: dict[str, torch.Tensor], speaker_id: int, talker, complete: bool = True) -> TalkerRow:
    """Qwen3-Omni: the user turn (media positions from the chosen hidden layer, text from the input
    embeddings, both projected), then the assistant header with the codec control tokens and the
    speaker, then the first reply token; the rest of the reply and tts-eos feed later steps.

    `complete=False`: the reply is still being written (at least its first token is there); the
    row's text then ends with what came, `qwen3_text_states` gives the rest as it comes, and the
    row's `eos` ends it."""
    check_bundle(bundle, ["embed.tts_bos", "embed.tts_eos", "embed.tts_pad"])
    cfg = talker.config
    user = bundle["prompt_user_mask"]
    mm = bundle["prompt_mm_mask"][user]
    with torch.no_grad():
        user_part = torch.empty((int(user.sum()), cfg.text_config.hidden_size))
        if mm.any():
            user_part[mm] = talker.hidden_projection(bundle["prompt_hidden"][user][mm]).float()
        user_part[~mm] = talker.text_projection(bundle["prompt_embeds"][user][~mm]).float()
        tts = talker.text_projection(torch.stack(
            [bundle["embed.tts_bos"], bundle["embed.tts_eos"], bundle["embed.tts_pad"]])).float()
        tts_bos, tts_eos, tts_pad = tts[0], tts[1], tts[2]
        # The assistant header is the prompt's last three tokens (<|im_start|>assistant\n).
        header = talker.text_projection(bundle["prompt_embeds"][-3:]).float()
        reply = talker.text_projection(bundle["reply_embeds"]).float() if bundle["reply_embeds"].shape[0] else None
        first = reply[:1] if reply is not None else tts_eos.unsqueeze(0)
        text_part = torch.cat([header, tts_pad.expand(4, -1), tts_bos.unsqueeze(0), first])
        codec_ids = torch.tensor([cfg.codec_nothink_id, cfg.codec_think_bos_id, cfg.codec_think_eos_id, speaker_id,
                                  cfg.codec_pad_id, cfg.codec_bos_id])
        codec_part = torch.cat([torch.zeros((3, text_part.shape[1])),
                                talker.get_input_embeddings()(codec_ids).float()])
        trailing = reply[1:] if reply is not None else torch.zeros((0, text_part.shape[1]))
    prompt_ids = bundle["prompt_ids"]
    return TalkerRow(
        embeds=torch.cat([user_part, text_part + codec_part]),
        # The thinker ids of the user turn place its media in 3D positions; the rest are plain text.
        ids=torch.cat([prompt_ids[user], torch.full((text_part.shape[0],), int(prompt_ids[-1]))]).long(),
        text=torch.cat([trailing, tts_eos.unsqueeze(0)]) if complete else trailing,
        eos=tts_eos,
        pad=tts_pad,
        extras=_extras(bundle),
    )
