"""Qwen2.5-Omni as three stage engines: thinker, talker, token2wav (each loaded alone)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from transformers import (
    Qwen2_5OmniTalkerForConditionalGeneration,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2_5OmniToken2WavModel,
)

from omnijobs.engines.base import Engine, RowResult, StageRequest
from omnijobs.engines.chunked_audio import MAX_WINDOW
from omnijobs.engines.diffusion.batching import Group, StepHook, generator, run_grouped
from omnijobs.engines.loading import check_complete
from omnijobs.engines.media_features import encode_wav
from omnijobs.engines.multimodal_lm import MultimodalLMEngine
from omnijobs.engines.loop_talker import LoopTalkerEngine
from omnijobs.engines.omni_glue import TalkerRow, qwen2_5_talker_row, qwen2_5_text_states
from omnijobs.engines.qwen2_5_talker_loop import Qwen2_5TalkerLoop
from omnijobs.engines.talker import talker_sampling
from omnijobs.engines.token2wav import MelRow, encode_speaker, sample_mels, vocode
from omnijobs.engines.token2wav_stream import StreamedToken2Wav, Tiling
from omnijobs.engines.torch_runtime import torch_device
from omnijobs.errors import EngineDead, FatalStageError

OUTPUT_RATE = 24000
# Context a streamed tile is rendered with, in codec frames (stage `options` left_context,
# right_context, vocoder_context may set them). Measured with loadtest/token2wav_tiles.py: the tiny
# model's joined tiles equal its whole render to float rounding (its DiT barely mixes across
# blocks); on a DiT made to mix strongly, 24 frames before and 12 after give a mel within 50 dB of
# the whole render's (12/12: 42 dB; 24/24: 75 dB: the look-back reaches further). BigVGAN's samples
# are exact with 4 frames on the tiny model; the released BigVGAN (kernels up to 11) reaches
# further (at most ~20 frames): measure a real checkpoint with that script and set the option.
LEFT_CONTEXT, RIGHT_CONTEXT, VOCODER_CONTEXT = 24, 12, 4
# Tiles fixed on the chunk schedule (option fixed_tiles, see Tiling.fixed): off. Measured with
# loadtest/streamed_audio.py --pipeline qwen2_5_omni (200 codes, concurrency 1), token2wav CPU per
# job was 2.33× the whole render's with fixed tiles (chunk 25, no smaller first chunk) and 1.64×
# with each call's frames one tile (first chunk 10, then 25), with an earlier first audio too.
FIXED_TILES = False
# Rows (jobs' windows) per render call: the whole render's rows/CPU-s at 1/4/8/16 rows per call
# were 7/11/12/13.
RENDER_ROWS = 16


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


def _speaker(req: StageRequest) -> str:
    return str(req.params.get("speaker", "Chelsie"))


class Qwen2_5OmniTalkerEngine(LoopTalkerEngine):
    """Thinker states → codec codes (T,), in the decode loop (engines/loop_talker.py,
    engines/qwen2_5_talker_loop.py). The speaker goes to token2wav with the codes: as an output,
    and, where token2wav streams, as a one-chunk stream written before any code."""

    def load(self) -> None:
        self.device = torch_device(self.ctx.device)
        self.model = _load(Qwen2_5OmniTalkerForConditionalGeneration, self.ctx.model_path).to(self.device).eval()
        m = self.model
        self.eos_ids = [m.codec_eos_token, m.codec_pad_token]
        self.loop = Qwen2_5TalkerLoop(m, self.device)
        self._start()

    def _prepare(self, req: StageRequest) -> tuple[dict, str]:
        sampling, speaker = talker_sampling(req.run_id, req.params), _speaker(req)
        if self.ctx.chunks is not None:
            # Before any code: a token2wav that starts beside this stage learns its voice first.
            self.ctx.chunks.emit_many([(req, "speaker", np.frombuffer(speaker.encode(), np.uint8), True)])
        return sampling, speaker

    def _talker_row(self, bundle, speaker, complete=True) -> TalkerRow:
        return qwen2_5_talker_row(bundle, speaker, self.model, complete=complete)

    def _text_states(self, replies) -> torch.Tensor:
        return qwen2_5_text_states(torch.cat([c["reply_hidden"] for c in replies]),
                                   torch.cat([c["reply_embeds"] for c in replies]))

    def _outputs(self, req: StageRequest, codes: torch.Tensor) -> dict:
        return {"codes": {"codes": codes[0]}, "speaker": _speaker(req), "usage": {"codes": int(codes.shape[1])}}


class Qwen2_5OmniToken2WavEngine(Engine):
    """Codec codes → mel (DiT) → 24 kHz waveform (BigVGAN) → WAV, the whole batch in one DiT solve.

    Each row's noise comes from its own seeded generator and padding is masked (see
    `engines/token2wav.py`), so a row renders the same audio alone as in any batch.

    Where the stage reads the talker's codes as a stream, rows are rendered tile by tile as the
    codes arrive instead (`engines/token2wav_stream.py`), from the stream or from the recorded codes
    of a retry alike, and come and go one by one (add / step / abort): the worker runs it in its
    continuous loop, so a job whose stream starts joins the renders already running.
    """

    def __init__(self, ctx):
        super().__init__(ctx)
        self.stream = ctx.stage.streams.get("codes")
        if self.stream is not None:
            # NOTE: only the streamed stage is continuous; unstreamed it stays a batch engine that
            # renders whole rows (exactly the model's own render).
            self.add, self.step, self.abort = self._add, self._step, self._abort

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
        if self.stream is not None:
            options = self.ctx.stage.options
            # The first tile may be shorter than the stream's first chunk: a first chunk of
            # `first_tile` + right_context frames is rendered the moment it arrives.
            tiling = Tiling(int(options.get("first_tile") or self.stream.first_chunk or self.stream.chunk),
                            self.stream.chunk,
                            int(options.get("left_context", LEFT_CONTEXT)), int(options.get("right_context", RIGHT_CONTEXT)),
                            int(options.get("vocoder_context", VOCODER_CONTEXT)),
                            bool(options.get("fixed_tiles", FIXED_TILES)))
            self.max_seqs = self.ctx.stage.batch.max_size
            frames = options.get("decode_frames")
            self.streamed = StreamedToken2Wav(self.ctx, self.model, self.speakers, tiling, OUTPUT_RATE, RENDER_ROWS,
                                              call_frames=int(frames) if frames else None,
                                              max_window=int(options.get("decode_window") or MAX_WINDOW))

    def run(self, batch: list[StageRequest]) -> list[RowResult]:
        if self.stream is not None:
            return self.streamed.run(batch, [self._codes(req) for req in batch])
        return run_grouped(self.ctx, batch, self._prepare, self._render, steps_of=lambda g: max(g.key[0] - 1, 1))

    # ------------------------------------------------------------------ streamed, request by request

    def _add(self, req: StageRequest) -> RowResult | None:
        codes = self._codes(req)
        return codes if isinstance(codes, BaseException) else self.streamed.add(req, codes)

    def _step(self) -> list[tuple[StageRequest, RowResult]]:
        return self.streamed.step()

    def _abort(self, run_ids) -> list[tuple[StageRequest, RowResult]]:
        return self.streamed.abort(run_ids)

    def _codes(self, req: StageRequest) -> torch.Tensor | BaseException | None:
        """A streamed row's recorded (1, T) codes, None when they come from the talker's stream, or its error."""
        if req.inputs.get("codes") is None:
            return None
        try:
            codes = _bundle_codes(req, self.num_embeds)
        except FatalStageError as exc:
            return exc
        if codes.dim() != 1:
            return FatalStageError(f"input 'codes' must hold a (T,) 'codes' tensor, got {tuple(codes.shape)}")
        if self.ctx.should_stop(req.run_id):
            return FatalStageError("canceled")
        return codes.unsqueeze(0)

    # ------------------------------------------------------------------ whole rows, a batch at once

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
