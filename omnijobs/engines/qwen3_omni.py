"""Qwen3-Omni (MoE) as three stage engines: thinker, talker (+ code predictor), code2wav."""

from __future__ import annotations

from typing import ClassVar

import torch
from transformers import (
    LogitsProcessorList,
    Qwen3OmniMoeCode2Wav,
    Qwen3OmniMoeTalkerForConditionalGeneration,
    Qwen3OmniMoeThinkerForConditionalGeneration,
    StoppingCriteriaList,
)

from omnijobs.engines.base import Engine, RowResult, StageRequest
from omnijobs.engines.chunked_audio import ChunkedAudio, Window
from omnijobs.engines.multimodal_lm import MultimodalLMEngine
from omnijobs.engines.omni_glue import qwen3_talker_row
from omnijobs.engines.qwen_omni import _bundle, _load
from omnijobs.engines.sampling import RowSampler, RowStop
from omnijobs.engines.talker import MinCodes, code_stream, collate, talker_sampling
from omnijobs.engines.torch_runtime import torch_device
from omnijobs.errors import FatalStageError

OUTPUT_RATE = 24000
# Frames of left context a window is decoded with: enough for the decoder's receptive field
# (measured on the tiny model: the window's samples equal the whole decode's to 6e-8).
LEFT_CONTEXT = 25
# Rows and frames per decoder call, unless the stage's options say otherwise (`decode_rows`,
# `decode_frames`): on a CPU the decoder is compute-bound and gains nothing from bigger calls
# (measured, tiny model, one thread, ms of CPU per row-frame: 1.56 at 1 row × 100 frames, 1.45 at
# 2 × 100, 2.13 at 4 × 100, 2.17 at 8 × 100, 1.99 at 1 × 300, 4.79 at 8 × 300). A GPU batches.
DECODE_ROWS = 2
DECODE_FRAMES = 100


class Qwen3OmniThinkerEngine(MultimodalLMEngine):
    handoff = True
    model_class = Qwen3OmniMoeThinkerForConditionalGeneration
    tokens: ClassVar[dict[str, str]] = {"image": "<|image_pad|>", "vision_start": "<|vision_start|>", "vision_end": "<|vision_end|>",
              "audio": "<|audio_pad|>", "audio_start": "<|audio_start|>", "audio_end": "<|audio_end|>"}

    def audio_tokens(self, frames: int) -> int:
        chunk = self.model.config.audio_config.n_window * 2
        rest = frames % chunk
        feat = (rest - 1) // 2 + 1
        return ((feat - 1) // 2 + 1 - 1) // 2 + 1 + (frames // chunk) * 13


class Qwen3OmniTalkerEngine(Engine):
    """Thinker states → multi-codebook codes (G, T): the talker draws the first group, its code
    predictor the other G-1 at every step."""

    def load(self) -> None:
        self.device = torch_device(self.ctx.device)
        self.model = _load(Qwen3OmniMoeTalkerForConditionalGeneration, self.ctx.model_path).to(self.device).eval()
        cfg = self.model.config
        if not hasattr(cfg, "audio_config"):
            # The talker's 3D positions for audio read the audio encoder's window from its own config,
            # which the talker config lacks; the encoder's default window is the released one.
            from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import (
                Qwen3OmniMoeAudioEncoderConfig,
            )

            cfg.audio_config = Qwen3OmniMoeAudioEncoderConfig()
        vocab = cfg.text_config.vocab_size
        # The top 1024 ids are control tokens; only end-of-speech may be sampled among them.
        self.suppress = [i for i in range(vocab - 1024, vocab) if i != cfg.codec_eos_token_id]
        self.eos_ids = [cfg.codec_eos_token_id]

    def run(self, batch: list[StageRequest]) -> list[RowResult]:
        results: list[RowResult | None] = [None] * len(batch)
        rows, sampling, live = [], [], []
        speakers = self.model.config.speaker_id or {}
        for i, req in enumerate(batch):
            try:
                speaker = str(req.params.get("speaker", "ethan")).lower()
                if speaker not in speakers:
                    raise FatalStageError(f"unknown speaker {speaker!r}; this model has {', '.join(sorted(speakers))}")
                with torch.no_grad():
                    rows.append(qwen3_talker_row(_bundle(req), speakers[speaker], self.model))
                sampling.append(talker_sampling(req.run_id, req.params))
                live.append(i)
            except FatalStageError as exc:
                results[i] = exc
                rows = rows[: len(live)]
        if not live:
            return results
        m = self.model
        enc = collate(rows, 0, self.device)
        extra = {k: enc[k] for k in ("image_grid_thw", "audio_feature_lengths") if k in enc}
        m.rope_deltas = None
        streamed = code_stream(self.ctx, "codes", [batch[i] for i in live], [s["max_tokens"] for s in sampling],
                               self.eos_ids, 0)
        hook = m.register_forward_hook(streamed.capture) if streamed else None
        try:
            out = self._generate(m, enc, sampling, batch, live, extra, streamed)
        finally:
            if hook is not None:
                hook.remove()
        # Step k's residual codes complete the first-group code drawn at step k-1.
        residuals = [h[-1] for h in out.hidden_states if h[-1] is not None]
        groups = torch.stack(residuals, dim=1) if residuals else torch.zeros((len(live), 0, m.config.num_code_groups))
        for j, i in enumerate(live):
            first = out.sequences[j].tolist()[: sampling[j]["max_tokens"]]
            end = next((k for k, c in enumerate(first) if c in self.eos_ids), len(first))
            end = min(end, groups.shape[1])
            codes = groups[j, :end].T.contiguous().long().cpu()  # (G, T)
            results[i] = {"codes": {"codes": codes}, "usage": {"codes": int(end)}}
        if streamed:
            streamed.finish([results[i]["codes"]["codes"] for i in live])
        return results

    def _generate(self, m, enc, sampling, batch, live, extra, streamed):
        with torch.no_grad():
            return m.generate(
                inputs_embeds=enc["inputs_embeds"], attention_mask=enc["attention_mask"],
                talker_input_ids=enc["input_ids"], trailing_text_hidden=enc["text"], tts_pad_embed=enc["pad"],
                max_new_tokens=max(s["max_tokens"] for s in sampling), do_sample=False,
                eos_token_id=self.eos_ids, pad_token_id=m.config.codec_pad_id, suppress_tokens=self.suppress,
                output_hidden_states=True, return_dict_in_generate=True,
                logits_processor=LogitsProcessorList([
                    MinCodes(0, [s["min_tokens"] for s in sampling], self.eos_ids),
                    RowSampler(sampling, self.eos_ids),
                ]),
                stopping_criteria=StoppingCriteriaList([RowStop(
                    0, [s["max_tokens"] for s in sampling], [batch[i].run_id for i in live], self.ctx.should_stop),
                    *([streamed] if streamed else [])]),
                **extra,
            )


class Qwen3OmniCode2WavEngine(Engine):
    """Codes (G, T) → 24 kHz waveform, decoded in windows of frames with left context
    (engines/chunked_audio.py), from the recorded codes or from the talker's stream.

    The decoder is causal: a window decoded after LEFT_CONTEXT frames of context gives the same
    samples (to float rounding) as decoding the whole sequence, and rows right-padded with zeros
    decode together. Each window's samples start where the previous window's stopped, so the
    joined windows are the whole decode (n frames → n·upsample − tail samples), with no gap at
    the seams.

    Rows come and go one by one (add / step / abort): the worker runs it in its continuous loop, so
    a job whose stream starts while others are being decoded joins them at the next step instead of
    waiting for a whole batch to end. `batch.max_size` is how many rows it holds at once (most of
    them wait for frames); DECODE_ROWS and DECODE_FRAMES cap one decoder call.
    """

    def load(self) -> None:
        self.device = torch_device(self.ctx.device)
        self.model = _load(Qwen3OmniMoeCode2Wav, self.ctx.model_path).float().to(self.device).eval()
        self.per_code = int(self.model.total_upsample)
        cfg = self.model.config
        with torch.no_grad():
            one = self.model(torch.zeros((1, cfg.num_quantizers, 1), dtype=torch.long, device=self.device))
        # Samples a decode of n frames is short of n·upsample (the convolutions' trailing delay).
        self.tail = self.per_code - int(one.shape[-1])
        self.max_seqs = self.ctx.stage.batch.max_size
        options = self.ctx.stage.options
        self.audio = ChunkedAudio(self.ctx, "codes", cfg.num_quantizers, OUTPUT_RATE, self._decode, self._window,
                                  max_rows=int(options.get("decode_rows", DECODE_ROWS)),
                                  max_window=int(options.get("decode_frames", DECODE_FRAMES)))

    # ------------------------------------------------------------------ request by request

    def add(self, req: StageRequest) -> RowResult | None:
        checked = self._check(req)
        if isinstance(checked, BaseException):
            return checked
        return self.audio.add(req, checked)

    def step(self) -> list[tuple[StageRequest, RowResult]]:
        return self.audio.step()

    def abort(self, run_ids) -> list[tuple[StageRequest, RowResult]]:
        return self.audio.abort(run_ids)

    # ------------------------------------------------------------------ a whole batch

    def run(self, batch: list[StageRequest]) -> list[RowResult]:
        results: list[RowResult | None] = [None] * len(batch)
        recorded, live = {}, []
        for i, req in enumerate(batch):
            checked = self._check(req)
            if isinstance(checked, BaseException):
                results[i] = checked
                continue
            if checked is not None:
                recorded[len(live)] = checked
            live.append(i)
        if not live:
            return results
        for j, out in enumerate(self.audio.run([batch[i] for i in live], recorded)):
            results[live[j]] = out
        return results

    def _check(self, req: StageRequest) -> torch.Tensor | BaseException | None:
        """The row's recorded codes, None when they come from the talker's stream, or its error."""
        cfg = self.model.config
        bundle = req.inputs.get("codes")
        c = bundle.get("codes") if isinstance(bundle, dict) else None
        if bundle is None and "codes" in self.ctx.stage.streams:
            return None
        if c is None or c.dim() != 2 or c.shape[0] != cfg.num_quantizers:
            return FatalStageError(f"input 'codes' must hold a ({cfg.num_quantizers}, T) 'codes' tensor")
        if c.shape[1] == 0:
            return FatalStageError("the talker produced no speech codes")
        if int(c.min()) < 0 or int(c.max()) >= cfg.codebook_size:
            return FatalStageError(f"speech codes outside the codebook (0..{cfg.codebook_size - 1})")
        if self.ctx.should_stop(req.run_id):
            return FatalStageError("canceled")
        return c.long()

    def _window(self, start: int, end: int, total: int) -> tuple[int, int, int, int]:
        """(first frame, last frame, samples to skip, samples to keep) for new frames start..end."""
        first = max(0, start - LEFT_CONTEXT)
        skip = (start - first) * self.per_code - self.tail if start else 0
        return first, end, skip, (end - first) * self.per_code - self.tail

    def _decode(self, windows: list[Window]) -> list:
        cfg = self.model.config
        for w in windows:
            if w.codes.numel() and (int(w.codes.min()) < 0 or int(w.codes.max()) >= cfg.codebook_size):
                raise FatalStageError(f"speech codes outside the codebook (0..{cfg.codebook_size - 1})")
        width = max(w.codes.shape[1] for w in windows)
        padded = torch.zeros((len(windows), cfg.num_quantizers, width), dtype=torch.long)
        for j, w in enumerate(windows):
            padded[j, :, : w.codes.shape[1]] = w.codes
        with torch.no_grad():
            wavs = self.model(padded.to(self.device))
        return [wavs[j].reshape(-1)[w.skip:w.keep].float().cpu().numpy() for j, w in enumerate(windows)]
