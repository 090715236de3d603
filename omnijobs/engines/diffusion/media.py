"""Encode generated pixels and samples as PNG, MP4 (H.264) and WAV; decode input images."""

from __future__ import annotations

import io
import wave
from fractions import Fraction

import av
import numpy as np

from omnijobs.engines.base import Media
from omnijobs.errors import FatalStageError


def png(image) -> Media:
    """A PIL image as PNG bytes. PNG writing is deterministic, so same pixels give same bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return Media(buf.getvalue(), "image/png")


def mp4(frames: np.ndarray, fps: int) -> Media:
    """Frames (F, H, W, 3) in [0, 1] as an H.264 MP4."""
    pixels = (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = pixels.shape[1], pixels.shape[2]
        stream.pix_fmt = "yuv420p"
        # One thread and no B-frame lookahead: deterministic bytes and no stray threads on a shared CPU.
        stream.options = {"preset": "veryfast", "threads": "1", "crf": "18"}
        for pixel in pixels:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixel, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Media(buf.getvalue(), "video/mp4")


def wav(samples: np.ndarray, rate: int) -> Media:
    """Samples (channels, n) in [-1, 1] as 16-bit PCM WAV."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(pcm.shape[0])
        out.setsampwidth(2)
        out.setframerate(int(rate))
        out.writeframes(pcm.T.tobytes())
    return Media(buf.getvalue(), "audio/wav")


def open_image(media: Media, mode: str = "RGB"):
    """An input image in `mode`; a file that is not an image fails only its own job."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(media, Media):
        raise FatalStageError(f"expected an image, got {type(media).__name__}")
    try:
        image = Image.open(io.BytesIO(media.data))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise FatalStageError(f"input is not a readable image ({media.content_type}): {exc}") from exc
    return image.convert(mode)
