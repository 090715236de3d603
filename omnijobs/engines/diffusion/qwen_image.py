"""Qwen-Image in three stages: text encoder → DiT denoise → VAE decode, each its own worker.

Prompt embeddings (one (tokens, dim) tensor per prompt, padding removed) go from encode to
denoise; unpacked latents (channels, 1, h, w) go from denoise to decode, so decode needs no params.
"""

from __future__ import annotations

from typing import Any

import torch

from omnijobs.engines.base import Engine, RowResult, StageRequest
from omnijobs.engines.diffusion.batching import Group, StepHook, generator, run_grouped
from omnijobs.engines.diffusion.loading import component_config, load_pipeline
from omnijobs.engines.diffusion.media import png
from omnijobs.engines.torch_runtime import torch_device
from omnijobs.errors import FatalStageError


def _rows_embeds(embeds: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
    lengths = mask.sum(dim=1).tolist() if mask is not None else [embeds.shape[1]] * embeds.shape[0]
    return [embeds[i, : int(n)].contiguous() for i, n in enumerate(lengths)]


def _pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (tokens, dim) tensors of different lengths with a mask of the real tokens."""
    longest = max(r.shape[0] for r in rows)
    embeds = torch.stack([torch.cat([r, r.new_zeros(longest - r.shape[0], r.shape[1])]) for r in rows])
    mask = torch.stack([torch.cat([torch.ones(r.shape[0]), torch.zeros(longest - r.shape[0])]) for r in rows])
    return embeds, mask.long()


class QwenImageEncodeEngine(Engine):
    """Prompt (and negative prompt) → embeddings, with the Qwen2.5-VL text encoder alone."""

    def load(self) -> None:
        self.pipe = load_pipeline(self.ctx.model_path, self.ctx.device, skip=("transformer", "vae"))

    def run(self, batch: list[StageRequest]) -> list[RowResult]:
        def prepare(req: StageRequest):
            prompt = req.inputs["prompt"]
            if not isinstance(prompt, str) or not prompt.strip():
                raise FatalStageError("prompt must be a non-empty string")
            return "all", {"prompt": prompt, "negative": req.params.get("negative_prompt") or ""}

        return run_grouped(self.ctx, batch, prepare, self._encode)

    @torch.inference_mode()
    def _encode(self, group: Group, hook: StepHook | None) -> list[dict[str, Any]]:
        texts = [r.data["prompt"] for r in group.rows]
        negatives = [r.data["negative"] for r in group.rows if r.data["negative"]]
        embeds = _rows_embeds(*self.pipe.encode_prompt(texts))
        neg_embeds = iter(_rows_embeds(*self.pipe.encode_prompt(negatives)) if negatives else [])
        out = []
        for row, e in zip(group.rows, embeds):
            bundle = {"prompt_embeds": e}
            if row.data["negative"]:
                bundle["negative_prompt_embeds"] = next(neg_embeds)
            out.append({"embeds": bundle})
        return out


class QwenImageDenoiseEngine(Engine):
    """Embeddings → latents with the DiT; rows of the same size, steps and guidance share one call."""

    def load(self) -> None:
        path = self.ctx.model_path
        self.pipe = load_pipeline(path, self.ctx.device, skip=("text_encoder", "tokenizer", "vae"))
        # Without its VAE the pipeline assumes a downsampling of 8; take the real one from the VAE's config.
        self.pipe.vae_scale_factor = 2 ** len(component_config(path, "vae")["temperal_downsample"])
        self.multiple = self.pipe.vae_scale_factor * 2

    def run(self, batch: list[StageRequest]) -> list[RowResult]:
        def prepare(req: StageRequest):
            p = req.params
            bundle = req.inputs["embeds"]
            if not isinstance(bundle, dict) or "prompt_embeds" not in bundle:
                raise FatalStageError("embeds must be a tensor bundle with prompt_embeds")
            height, width = int(p["height"]), int(p["width"])
            if height % self.multiple or width % self.multiple:
                raise FatalStageError(f"height and width must be multiples of {self.multiple}, got {height}x{width}")
            guidance = float(p.get("guidance_scale") or 1.0)
            cfg = guidance > 1.0 and "negative_prompt_embeds" in bundle
            key = (height, width, int(p["num_inference_steps"]), guidance if cfg else 1.0, cfg)
            return key, {"bundle": bundle, "seed": p.get("seed")}

        return run_grouped(self.ctx, batch, prepare, self._denoise, steps_of=lambda g: g.key[2])

    @torch.inference_mode()
    def _denoise(self, group: Group, hook: StepHook) -> list[dict[str, Any]]:
        height, width, steps, guidance, cfg = group.key
        device = torch_device(self.ctx.device)
        embeds, mask = _pad([r.data["bundle"]["prompt_embeds"] for r in group.rows])
        kwargs: dict[str, Any] = {}
        if cfg:
            neg, neg_mask = _pad([r.data["bundle"]["negative_prompt_embeds"] for r in group.rows])
            kwargs = {"negative_prompt_embeds": neg.to(device), "negative_prompt_embeds_mask": neg_mask.to(device)}
        latents = self.pipe(
            prompt_embeds=embeds.to(device), prompt_embeds_mask=mask.to(device), true_cfg_scale=guidance,
            height=height, width=width, num_inference_steps=steps,
            generator=[generator(r.data["seed"]) for r in group.rows], output_type="latent",
            callback_on_step_end=hook.on_step_end, **kwargs,
        ).images
        latents = self.pipe._unpack_latents(latents, height, width, self.pipe.vae_scale_factor)
        return [{"latents": {"latents": latents[i].cpu().contiguous()}} for i in range(len(group.rows))]


class QwenImageDecodeEngine(Engine):
    """Latents → PNG with the VAE alone; latents of one shape decode together."""

    def load(self) -> None:
        from diffusers import AutoencoderKLQwenImage
        from diffusers.image_processor import VaeImageProcessor

        self.device = torch_device(self.ctx.device)
        self.vae = AutoencoderKLQwenImage.from_pretrained(self.ctx.model_path / "vae").to(self.device).eval()
        scale = 2 ** len(self.vae.temperal_downsample)
        self.processor = VaeImageProcessor(vae_scale_factor=scale * 2)

    def run(self, batch: list[StageRequest]) -> list[RowResult]:
        z_dim = self.vae.config.z_dim

        def prepare(req: StageRequest):
            bundle = req.inputs["latents"]
            latents = bundle.get("latents") if isinstance(bundle, dict) else None
            if latents is None or latents.dim() != 4 or latents.shape[0] != z_dim:
                raise FatalStageError(f"latents must be a ({z_dim}, 1, h, w) tensor")
            return tuple(latents.shape), {"latents": latents}

        return run_grouped(self.ctx, batch, prepare, self._decode)

    @torch.inference_mode()
    def _decode(self, group: Group, hook: StepHook | None) -> list[dict[str, Any]]:
        cfg = self.vae.config
        latents = torch.stack([r.data["latents"] for r in group.rows]).to(self.device, self.vae.dtype)
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(latents)
        std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(latents)
        pixels = self.vae.decode(latents * std + mean, return_dict=False)[0][:, :, 0]
        return [{"image": png(image)} for image in self.processor.postprocess(pixels, output_type="pil")]
