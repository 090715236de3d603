"""Whole-pipeline diffusion stages: text → image, image + text → image, text → video, text → audio.

Each engine reads its rows' params, groups rows whose pipeline call would be identical but for the
prompt and seed, and runs one call per group with a generator per row.
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable
from typing import Any, ClassVar

import torch

from omnijobs.engines.base import Engine, RowResult, StageRequest
from omnijobs.engines.diffusion.batching import Group, StepHook, generator, run_grouped
from omnijobs.engines.diffusion.loading import load_pipeline
from omnijobs.engines.diffusion.media import mp4, png, wav
from omnijobs.errors import FatalStageError


def _prompt(req: StageRequest) -> str:
    prompt = req.inputs.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise FatalStageError("prompt must be a non-empty string")
    return prompt


def checked_size(params: dict[str, Any], multiple: int) -> tuple[int, int]:
    height, width = int(params["height"]), int(params["width"])
    if height % multiple or width % multiple:
        raise FatalStageError(f"height and width must be multiples of {multiple}, got {height}x{width}")
    return height, width


class DiffusionEngine(Engine):
    """Shared by the single-stage engines: load the whole pipeline, group, call, encode."""

    # Pipeline-class specific arguments of every call (see the subclasses and FAMILY_CALL_ARGS).
    call_args: ClassVar[dict[str, Any]] = {}

    def load(self) -> None:
        self.pipe = load_pipeline(self.ctx.model_path, self.ctx.device)
        self.call_args = {**self.call_args, **FAMILY_CALL_ARGS.get(type(self.pipe).__name__, {})}
        self.step_callback = _step_callback(type(self.pipe))

    def run(self, batch: list[StageRequest]) -> list[RowResult]:
        return run_grouped(self.ctx, batch, self.prepare, self._call, steps_of=lambda g: g.key[0])

    def prepare(self, req: StageRequest) -> tuple[Hashable, dict[str, Any]]:
        """(group key starting with the step count, row data with at least prompt and seed)."""
        raise NotImplementedError

    @torch.inference_mode()
    def _call(self, group: Group, hook: StepHook) -> list[dict[str, Any]]:
        rows = [r.data for r in group.rows]
        kwargs = dict(self.call_args)
        if any(r.get("negative") for r in rows):
            kwargs["negative_prompt"] = [r.get("negative") or "" for r in rows]
        if self.step_callback == "on_step_end":
            kwargs["callback_on_step_end"] = hook.on_step_end
        elif self.step_callback == "legacy":
            kwargs.update(callback=hook.legacy, callback_steps=1)
        scheduler = self.pipe.scheduler
        if self.step_callback == "scheduler":
            # NOTE: the scheduler's step is wrapped on the instance for this call only.
            step = type(scheduler).step

            def hooked_step(*args, **kw):
                out = step(scheduler, *args, **kw)
                hook.after_step()
                return out

            scheduler.step = hooked_step
        try:
            out = self.pipe(
                prompt=[r["prompt"] for r in rows], generator=[generator(r["seed"]) for r in rows],
                **self.group_args(group.key, rows), **kwargs,
            )
        finally:
            scheduler.__dict__.pop("step", None)
        return self.encode(out, rows)

    def group_args(self, key: tuple, rows: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def encode(self, out, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _common(self, req: StageRequest) -> dict[str, Any]:
        return {"prompt": _prompt(req), "seed": req.params.get("seed"), "negative": req.params.get("negative_prompt")}


# Per pipeline class: fixed call arguments. LongCat would otherwise rewrite the prompt with its
# text encoder's `generate` before encoding it.
FAMILY_CALL_ARGS: dict[str, dict[str, Any]] = {
    "LongCatImagePipeline": {"enable_prompt_rewrite": False},
}


def _step_callback(pipeline_cls) -> str:
    """How a pipeline lets us in between steps: "on_step_end", "legacy" (callback/callback_steps), or
    "scheduler" for pipelines whose __call__ takes no step callback (LongCat)."""
    params = inspect.signature(pipeline_cls.__call__).parameters
    if "callback_on_step_end" in params:
        return "on_step_end"
    return "legacy" if "callback" in params else "scheduler"


class TextToImageEngine(DiffusionEngine):
    def load(self) -> None:
        super().load()
        self.multiple = self.pipe.vae_scale_factor * 2

    def prepare(self, req: StageRequest):
        p = req.params
        height, width = checked_size(p, self.multiple)
        row = self._common(req)
        key = (int(p["num_inference_steps"]), height, width, float(p["guidance_scale"]), bool(row["negative"]))
        return key, row

    def group_args(self, key: tuple, rows: list[dict[str, Any]]) -> dict[str, Any]:
        steps, height, width, guidance, _ = key
        return {"num_inference_steps": steps, "height": height, "width": width, "guidance_scale": guidance}

    def encode(self, out, rows):
        return [{"image": png(image)} for image in out.images]


class TextToVideoEngine(DiffusionEngine):
    """Wan: one call runs both experts of 2.2 (high noise, then low noise past boundary_ratio)."""

    call_args: ClassVar[dict[str, Any]] = {"output_type": "np"}

    def load(self) -> None:
        super().load()
        self.multiple = self.pipe.vae_scale_factor_spatial * 2
        self.frame_step = self.pipe.vae_scale_factor_temporal
        self.fps = int(self.ctx.stage.options.get("fps", 16))

    def prepare(self, req: StageRequest):
        p = req.params
        height, width = checked_size(p, self.multiple)
        frames = int(p["num_frames"])
        if (frames - 1) % self.frame_step:
            raise FatalStageError(f"num_frames must be {self.frame_step}k+1, got {frames}")
        row = self._common(req)
        key = (int(p["num_inference_steps"]), height, width, frames, float(p["guidance_scale"]), bool(row["negative"]))
        return key, row

    def group_args(self, key: tuple, rows):
        steps, height, width, frames, guidance, _ = key
        return {"num_inference_steps": steps, "height": height, "width": width, "num_frames": frames,
                "guidance_scale": guidance}

    def encode(self, out, rows):
        return [{"video": mp4(frames, self.fps)} for frames in out.frames]


class TextToAudioEngine(DiffusionEngine):
    """Stable Audio: the DiT always makes its full window; the waveform is cut to the asked seconds."""

    def load(self) -> None:
        super().load()
        vae = self.pipe.vae
        hop = vae.hop_length
        self.rate = int(vae.config.sampling_rate)
        self.max_seconds = self.pipe.transformer.config.sample_size * hop / self.rate

    def prepare(self, req: StageRequest):
        p = req.params
        seconds = float(p["seconds"])
        if seconds > self.max_seconds:
            raise FatalStageError(f"seconds must be <= {self.max_seconds:g} for this model, got {seconds:g}")
        row = self._common(req)
        return (int(p["num_inference_steps"]), seconds, float(p["guidance_scale"]), bool(row["negative"])), row

    def group_args(self, key: tuple, rows):
        steps, seconds, guidance, _ = key
        return {"num_inference_steps": steps, "audio_end_in_s": seconds, "guidance_scale": guidance,
                "output_type": "np"}

    def encode(self, out, rows):
        return [{"audio": wav(samples, self.rate)} for samples in out.audios]
