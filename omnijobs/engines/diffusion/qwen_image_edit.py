"""Qwen-Image-Edit: a condition image and an instruction → an image, in one stage.

One stage because the condition image feeds both the text encoder (as vision tokens) and the
DiT (as VAE latents): splitting would ship the image and its latents between three workers.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from omnijobs.engines.base import StageRequest
from omnijobs.engines.diffusion.generate import DiffusionEngine, checked_size
from omnijobs.engines.diffusion.media import open_image, png


def dimensions(area: int, ratio: float, multiple: int = 32) -> tuple[int, int]:
    """(width, height) of about `area` pixels at `ratio`, as the pipeline computes them."""
    width = math.sqrt(area * ratio)
    return round(width / multiple) * multiple, round(width / ratio / multiple) * multiple


@contextlib.contextmanager
def condition_area(module, area: int, with_none: bool = True):
    """NOTE: the Qwen-Image edit and layered pipelines resize the condition image to a fixed area
    (~1024x1024, or 640/1024 buckets) through their module's `calculate_dimensions`; the area is a
    parameter here, so that function is swapped for the length of one call (a worker runs one call
    at a time)."""
    original = module.calculate_dimensions
    if with_none:
        module.calculate_dimensions = lambda _area, ratio: (*dimensions(area, ratio), None)
    else:
        module.calculate_dimensions = lambda _area, ratio: dimensions(area, ratio)
    try:
        yield
    finally:
        module.calculate_dimensions = original


class QwenImageEditEngine(DiffusionEngine):
    def load(self) -> None:
        super().load()
        self.multiple = self.pipe.vae_scale_factor * 2

    def prepare(self, req: StageRequest):
        p = req.params
        image = open_image(req.inputs["image"])
        area = int(p["condition_area"])
        cond_w, cond_h = dimensions(area, image.width / image.height)
        if p.get("height") is None or p.get("width") is None:
            height, width = cond_h, cond_w
        else:
            height, width = checked_size(p, self.multiple)
        row = {**self._common(req), "image": image}
        key = (int(p["num_inference_steps"]), height, width, area, (cond_w, cond_h), float(p["guidance_scale"]),
               bool(row["negative"]))
        return key, row

    def group_args(self, key: tuple, rows: list[dict[str, Any]]) -> dict[str, Any]:
        steps, height, width, _, _, guidance, negative = key
        # Guidance needs a negative branch; without one the pipeline would only warn and ignore it.
        return {"image": [r["image"] for r in rows], "num_inference_steps": steps, "height": height,
                "width": width, "true_cfg_scale": guidance if negative else 1.0}

    def _call(self, group, hook):
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit

        with condition_area(pipeline_qwenimage_edit, group.key[3]):
            return super()._call(group, hook)

    def encode(self, out, rows):
        return [{"image": png(image)} for image in out.images]
