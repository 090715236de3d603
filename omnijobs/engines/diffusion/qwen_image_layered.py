"""Qwen-Image-Layered: an image (and its caption) → N RGBA layers, in one stage.

One stage for the reason Qwen-Image-Edit is: the input image feeds the DiT as latents next to
the layers being denoised. The layers of one job come back as one animated PNG (APNG), a frame
per layer, so a job has one file output whatever its layer count.
"""

from __future__ import annotations

import io
from typing import Any

from omnijobs.engines.base import Media, StageRequest
from omnijobs.engines.diffusion.generate import DiffusionEngine
from omnijobs.engines.diffusion.media import open_image
from omnijobs.engines.diffusion.qwen_image_edit import condition_area, dimensions


def apng(frames) -> Media:
    """RGBA frames as one APNG; each frame is a whole layer (no blending with the previous one)."""
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:], duration=1000, loop=0,
                   disposal=0, blend=0)
    return Media(buf.getvalue(), "image/png")


class QwenImageLayeredEngine(DiffusionEngine):
    def prepare(self, req: StageRequest):
        p = req.params
        image = open_image(req.inputs["image"], "RGBA")
        area = int(p["condition_area"])
        size = dimensions(area, image.width / image.height)
        row = {**self._common(req), "image": image}
        key = (int(p["num_inference_steps"]), int(p["layers"]), area, size, float(p["guidance_scale"]),
               bool(row["negative"]))
        return key, row

    def group_args(self, key: tuple, rows: list[dict[str, Any]]) -> dict[str, Any]:
        steps, layers, _, _, guidance, negative = key
        return {"image": [r["image"] for r in rows], "layers": layers, "num_inference_steps": steps,
                "true_cfg_scale": guidance if negative else 1.0}

    def _call(self, group, hook):
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_layered

        with condition_area(pipeline_qwenimage_layered, group.key[2], with_none=False):
            return super()._call(group, hook)

    def encode(self, out, rows):
        # NOTE: the pipeline slices its flat list of decoded layers per row with a stride one too
        # long when a call has several rows; the slices still hold every layer in order, so the
        # flat list is rebuilt and cut again by the layer count.
        flat = [image for row_images in out.images for image in row_images]
        layers = len(flat) // len(rows)
        return [{"layers": apng(flat[i * layers:(i + 1) * layers])} for i in range(len(rows))]
