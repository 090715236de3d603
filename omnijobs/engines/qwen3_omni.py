"""Qwen3-Omni (MoE) as three stage engines: thinker, talker (+ code predictor), code2wav."""

from __future__ import annotations

from typing import ClassVar

import torch
from transformers import (
    Qwen3OmniMoeCode2Wav,
    Qwen3OmniMoeTalkerForConditionalGeneration,
    Qwen3OmniMoeThinkerForConditionalGeneration,
)

from omnijobs.engines.base import Engine, RowResult, StageRequest
from omnijobs.engines.chunked_audio import ChunkedAudio, Window
from omnijobs.engines.multimodal_lm import MultimodalLMEngine
from omnijobs.engines.loop_talker import LoopTalkerEngine
from omnijobs.engines.omni_glue import TalkerRow, qwen3_talker_row, qwen3_text_states
from omnijobs.engines.qwen3_talker_loop import Qwen3TalkerLoop
from omnijobs.engines.qwen_omni import _load
from omnijobs.engines.talker import talker_sampling
from omnijobs.engines.torch_runtime import torch_device
from omnijobs.errors import FatalStageError

OUTPUT_RATE = 24000
# Frames of left context the decoder's transformer reads before a window (measured on the tiny
# model: its states then equal the whole sequence's to 1.2e-7).
LEFT_CONTEXT = 25
# The convolutions after it, which hold nearly all of the decoder's compute (76 of 77 ms for 100
# frames on the tiny model), are run over the window plus only as many frames as they reach back:
# that reach is measured at load (6 frames for the released layout), at most this many.
CONV_REACH_MAX = 24
# Rows and new frames (all rows together) per decoder call, unless the stage's options say
# otherwise (`decode_rows`, `decode_frames`). On a CPU the convolutions' intermediates (1920
# samples a frame) outgrow the caches, so a call of more than about 100 frames costs more per
# frame (measured, tiny model, one thread, ms of CPU per row-frame: 1 row × 10 frames 1.49,
# 2 × 10 1.07, 2 × 25 0.90, 2 × 50 0.86, 1 × 82 1.00, 2 × 82 1.36); a GPU batches far more.
DECODE_ROWS = 4
DECODE_FRAMES = 100
# While a stream runs, a window after the first holds at least this many new frames (unless its
# listener is about to run dry): every window is decoded with LEFT_CONTEXT frames before it.
DECODE_MIN_FRAMES = 25


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


class Qwen3OmniTalkerEngine(LoopTalkerEngine):
    """Thinker states → multi-codebook codes (G, T): the talker draws the first group, its code
    predictor the other G-1 at every step, in the decode loop (engines/loop_talker.py,
    engines/qwen3_talker_loop.py)."""

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
        self.loop = Qwen3TalkerLoop(self.model, self.device, self.suppress, cfg.codec_eos_token_id)
        self._start()

    def _prepare(self, req: StageRequest) -> tuple[dict, int]:
        speakers = self.model.config.speaker_id or {}
        speaker = str(req.params.get("speaker", "ethan")).lower()
        if speaker not in speakers:
            raise FatalStageError(f"unknown speaker {speaker!r}; this model has {', '.join(sorted(speakers))}")
        return talker_sampling(req.run_id, req.params), speakers[speaker]

    def _talker_row(self, bundle, speaker, complete=True) -> TalkerRow:
        return qwen3_talker_row(bundle, speaker, self.model, complete=complete)

    def _text_states(self, replies) -> torch.Tensor:
        return qwen3_text_states(torch.cat([c["reply_embeds"] for c in replies]), self.model)


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
        self.conv_reach = self._conv_reach()
        self.max_seqs = self.ctx.stage.batch.max_size
        options = self.ctx.stage.options
        self.audio = ChunkedAudio(self.ctx, "codes", cfg.num_quantizers, OUTPUT_RATE, self._decode, self._window,
                                  max_rows=int(options.get("decode_rows", DECODE_ROWS)),
                                  max_window=int(options.get("decode_frames", DECODE_FRAMES)),
                                  call_frames=int(options.get("decode_frames", DECODE_FRAMES)),
                                  min_window=int(options.get("decode_min_frames", DECODE_MIN_FRAMES)))

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
        """Decode the windows in one call: the transformer over each window and its LEFT_CONTEXT,
        the convolutions over the window and their reach only."""
        cfg = self.model.config
        for w in windows:
            if w.codes.numel() and (int(w.codes.min()) < 0 or int(w.codes.max()) >= cfg.codebook_size):
                raise FatalStageError(f"speech codes outside the codebook (0..{cfg.codebook_size - 1})")
        width = _bucket(max(w.codes.shape[1] for w in windows))
        padded = torch.zeros((len(windows), cfg.num_quantizers, width), dtype=torch.long)
        for j, w in enumerate(windows):
            padded[j, :, : w.codes.shape[1]] = w.codes
        # Rows are right-padded: the decoder is causal, so padding changes nothing before it.
        starts = [max(w.first, w.start - self.conv_reach) for w in windows]
        with torch.no_grad():
            states = self._states(padded.to(self.device))
            reach = _bucket(max(w.last - a for w, a in zip(windows, starts, strict=True)))
            cut = torch.zeros((len(windows), reach, states.shape[2]), dtype=states.dtype, device=states.device)
            for j, (w, a) in enumerate(zip(windows, starts, strict=True)):
                cut[j, : w.last - a] = states[j, a - w.first: w.last - w.first]
            wavs = self._convolve(cut)
        out = []
        for j, (w, a) in enumerate(zip(windows, starts, strict=True)):
            skip = (w.start - a) * self.per_code - self.tail if w.start else 0
            out.append(wavs[j].reshape(-1)[skip:(w.end - a) * self.per_code - self.tail].float().cpu().numpy())
        return out

    # The model's forward in its two parts (embedding + transformer, then the convolutions).

    def _states(self, codes: torch.Tensor) -> torch.Tensor:
        m = self.model
        hidden = m.code_embedding(codes + m.code_offset).mean(1)
        return m.pre_transformer(inputs_embeds=hidden).last_hidden_state

    def _convolve(self, states: torch.Tensor) -> torch.Tensor:
        hidden = states.permute(0, 2, 1)
        for blocks in self.model.upsample:
            for block in blocks:
                hidden = block(hidden)
        for block in self.model.decoder:
            hidden = block(hidden)
        return hidden.clamp(min=-1, max=1)

    def _conv_reach(self) -> int:
        """Frames of states the convolutions read before a frame's samples: the fewest with which a
        window's samples equal those of the convolutions run from the start (seeded codes)."""
        cfg = self.model.config
        generator = torch.Generator().manual_seed(0)
        codes = torch.randint(0, cfg.codebook_size, (1, cfg.num_quantizers, CONV_REACH_MAX + 12), generator=generator)
        start, end = CONV_REACH_MAX + 4, CONV_REACH_MAX + 12
        with torch.no_grad():
            states = self._states(codes.to(self.device))
            whole = self._convolve(states).reshape(-1)
            ref = whole[start * self.per_code - self.tail: end * self.per_code - self.tail]
            for reach in range(1, CONV_REACH_MAX + 1):
                piece = self._convolve(states[:, start - reach: end]).reshape(-1)
                piece = piece[reach * self.per_code - self.tail: (end - start + reach) * self.per_code - self.tail]
                if float((piece - ref).abs().max()) <= 1e-6:
                    return reach
        return LEFT_CONTEXT


def _bucket(frames: int) -> int:
    """The padded width of a decoder call: a few widths only, since the CPU kernels of the
    convolutions are prepared once per input shape and a new shape costs about as much again as
    the call (measured, tiny model: 1.92 ms per frame on widths never seen, 1.15 on seen ones).
    Up to 8 frames every width is its own: the first piece of each stream is that short, it is on
    the way to the first audio, and padding it costs more than its shape (tiny model, warm: 3
    frames in 9.3 ms exact, 13.0 padded to 8)."""
    if frames <= 8:
        return frames
    step = 8 if frames <= 64 else 16
    return -(-frames // step) * step
