"""Qwen2.5-Omni as three stage engines: thinker, talker, token2wav (each loaded alone)."""

from __future__ import annotations

from typing import ClassVar

import torch
from transformers import (
    LogitsProcessorList,
    Qwen2_5OmniTalkerForConditionalGeneration,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2_5OmniToken2WavModel,
    StoppingCriteriaList,
)

from omnijobs.engines.base import Engine, RowResult, StageRequest
from omnijobs.engines.diffusion.batching import Group, StepHook, generator, run_grouped
from omnijobs.engines.loading import check_complete
from omnijobs.engines.media_features import encode_wav
from omnijobs.engines.multimodal_lm import MultimodalLMEngine
from omnijobs.engines.omni_glue import qwen2_5_talker_row
from omnijobs.engines.sampling import RowSampler, RowStop
from omnijobs.engines.talker import MinCodes, collate, talker_sampling
from omnijobs.engines.token2wav import MelRow, encode_speaker, sample_mels, vocode
from omnijobs.engines.torch_runtime import torch_device
from omnijobs.errors import EngineDead, FatalStageError

OUTPUT_RATE = 24000


class Qwen2_5OmniThinkerEngine(MultimodalLMEngine):
    handoff = True
    model_class = Qwen2_5OmniThinkerForConditionalGeneration
    tokens: ClassVar[dict[str, str]] = {"image": "<|IMAGE|>", "vision_start": "<|vision_bos|>", "vision_end": "<|vision_eos|>",
              "audio": "<|AUDIO|>", "audio_start": "<|audio_bos|>", "audio_end": "<|audio_eos|>"}

    def audio_tokens(self, frames: int) -> int:
        frames = (frames - 1) // 2 + 1
        return (frames - 2) // 2 + 1


def _load(cls, path):
    if not (path / "config.json").is_file():
        raise EngineDead(f"model folder not found: {path} (build tiny models with `omnijobs models build-tiny`)")
    model, info = cls.from_pretrained(path, output_loading_info=True)
    check_complete(path, info)
    return model


def _bundle(req: StageRequest) -> dict[str, torch.Tensor]:
    bundle = req.inputs.get("hidden")
    if not isinstance(bundle, dict):
        raise FatalStageError(f"input 'hidden' must be the thinker's tensor bundle, got {type(bundle).__name__}")
    return bundle


class Qwen2_5OmniTalkerEngine(Engine):
    """Thinker states → codec codes; the full model's `generate` between thinker and token2wav."""

    def load(self) -> None:
        self.device = torch_device(self.ctx.device)
        self.model = _load(Qwen2_5OmniTalkerForConditionalGeneration, self.ctx.model_path).to(self.device).eval()
        m = self.model
        self.eos_ids = [m.codec_eos_token, m.codec_pad_token]

    def run(self, batch: list[StageRequest]) -> list[RowResult]:
        results: list[RowResult | None] = [None] * len(batch)
        rows, sampling, live = [], [], []
        for i, req in enumerate(batch):
            try:
                speaker = str(req.params.get("speaker", "Chelsie"))
                rows.append(qwen2_5_talker_row(_bundle(req), speaker, self.model))
                sampling.append(talker_sampling(req.run_id, req.params))
                live.append(i)
            except FatalStageError as exc:
                results[i] = exc
                rows = rows[: len(live)]
        if not live:
            return results
        m = self.model
        enc = collate(rows, m.codec_pad_token, self.device)
        prompt_len = enc["input_ids"].shape[1]
        extra = {k: enc[k] for k in ("image_grid_thw", "audio_feature_lengths") if k in enc}
        m.rope_deltas = None
        with torch.no_grad():
            out = m.generate(
                input_ids=enc["input_ids"], inputs_embeds=enc["inputs_embeds"], attention_mask=enc["attention_mask"],
                input_text_ids=enc["text_ids"], thinker_reply_part=enc["text"],
                max_new_tokens=max(s["max_tokens"] for s in sampling), do_sample=False,
                eos_token_id=self.eos_ids, pad_token_id=m.codec_pad_token,
                suppress_tokens=[m.codec_bos_token, m.codec_mask_token],
                logits_processor=LogitsProcessorList([
                    MinCodes(prompt_len, [s["min_tokens"] for s in sampling], self.eos_ids),
                    RowSampler(sampling, self.eos_ids),
                ]),
                stopping_criteria=StoppingCriteriaList([RowStop(
                    prompt_len, [s["max_tokens"] for s in sampling], [batch[i].run_id for i in live],
                    self.ctx.should_stop)]),
                **extra,
            )
        for j, i in enumerate(live):
            codes = out[j, prompt_len:].tolist()[: sampling[j]["max_tokens"]]
            end = next((k for k, c in enumerate(codes) if c in self.eos_ids), len(codes))
            results[i] = {
                "codes": {"codes": torch.tensor(codes[:end], dtype=torch.long)},
                "speaker": str(batch[i].params.get("speaker", "Chelsie")),
                "usage": {"codes": end},
            }
        return results


class Qwen2_5OmniToken2WavEngine(Engine):
    """Codec codes → mel (DiT) → 24 kHz waveform (BigVGAN) → WAV, the whole batch in one DiT solve.

    Each row's noise comes from its own seeded generator and padding is masked (see
    `engines/token2wav.py`), so a row renders the same audio alone as in any batch.
    """

    def load(self) -> None:
        path = self.ctx.model_path
        self.device = torch_device(self.ctx.device)
        self.model = _load(Qwen2_5OmniToken2WavModel, path).float().to(self.device).eval()
        speakers = path / "spk_dict.pt"
        if not speakers.is_file():
            raise EngineDead(f"{path} lacks spk_dict.pt (the speakers' conditioning)")
        dit = self.model.code2wav_dit_model
        self.speakers = {name: encode_speaker(dit, spk["cond"].to(self.device), spk["ref_mel"].to(self.device))
                         for name, spk in torch.load(speakers, weights_only=True).items()}
        self.num_embeds = self.model.config.dit_config.num_embeds

    def run(self, batch: list[StageRequest]) -> list[RowResult]:
        return run_grouped(self.ctx, batch, self._prepare, self._render, steps_of=lambda g: max(g.key[0] - 1, 1))

    def _prepare(self, req: StageRequest):
        codes = _bundle_codes(req, self.num_embeds)
        speaker = str(req.inputs.get("speaker") or req.params.get("speaker") or "Chelsie")
        if speaker not in self.speakers:
            raise FatalStageError(f"unknown speaker {speaker!r}; this model has {', '.join(sorted(self.speakers))}")
        if self.ctx.should_stop(req.run_id):
            raise FatalStageError("canceled")
        # Rows solve together only on the same time grid.
        key = (int(req.params.get("num_steps", 10)),)
        return key, {"row": MelRow(codes.to(self.device), self.speakers[speaker], generator(req.params.get("seed")))}

    def _render(self, group: Group, hook: StepHook) -> list[dict]:
        evals = 0

        def on_eval():  # four velocity evaluations make one RK4 step
            nonlocal evals
            evals += 1
            if evals % 4 == 0:
                hook.after_step()

        mels = sample_mels(self.model.code2wav_dit_model, [r.data["row"] for r in group.rows], group.key[0],
                           on_eval=on_eval)
        out = []
        for wav in vocode(self.model.code2wav_bigvgan_model, mels):
            samples = wav.float().cpu().numpy()
            out.append({"audio": encode_wav(samples, OUTPUT_RATE),
                        "usage": {"samples": int(samples.size), "seconds": samples.size / OUTPUT_RATE}})
        return out


def _bundle_codes(req: StageRequest, vocab: int) -> torch.Tensor:
    bundle = req.inputs.get("codes")
    codes = bundle.get("codes") if isinstance(bundle, dict) else None
    if codes is None:
        raise FatalStageError("input 'codes' must be the talker's tensor bundle with a 'codes' tensor")
    codes = codes.long()
    if codes.numel() == 0:
        raise FatalStageError("the talker produced no speech codes")
    if int(codes.min()) < 0 or int(codes.max()) >= vocab:
        raise FatalStageError(f"speech codes outside the codebook (0..{vocab - 1})")
    return codes
