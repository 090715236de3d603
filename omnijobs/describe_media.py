"""What a media output holds, in one line: so a demo (or an operator) sees it is not empty or silent.

PNG/APNG/WebP/GIF: size and frame count (Pillow, a core dependency); WAV: duration, peak level and
whether every sample is zero; MP4/WebM: frames, size and duration (PyAV, in the diffusers extra;
without it only the byte count).
"""

from __future__ import annotations

import io
import math
import wave
from dataclasses import dataclass


@dataclass(frozen=True)
class Described:
    line: str
    silent: bool = False  # a WAV whose every sample is 0
    empty: bool = False  # no frames, no pixels, or unreadable


def describe(data: bytes, content_type: str) -> Described:
    kind = content_type.split(";")[0].strip().lower()
    try:
        if kind.startswith("image/"):
            return _image(data)
        if kind in ("audio/wav", "audio/x-wav", "audio/wave"):
            return _wav(data)
        if kind.startswith("video/"):
            return _video(data)
    except Exception as exc:  # a broken file is what this is here to show
        return Described(f"unreadable {kind}: {exc}", empty=True)
    return Described(f"{len(data)} bytes")


def _image(data: bytes) -> Described:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        frames = getattr(img, "n_frames", 1)
        w, h = img.size
        extrema = img.convert("RGBA").getextrema()
    flat = all(lo == hi for lo, hi in extrema)
    line = f"{w}x{h} {img.format}, {frames} frame{'s' if frames != 1 else ''}" + (", one flat colour" if flat else "")
    return Described(line, empty=w * h == 0)


def _wav(data: bytes) -> Described:
    import array

    with wave.open(io.BytesIO(data)) as w:
        rate, channels, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
        raw = w.readframes(n)
    if width != 2:
        return Described(f"{n / rate:.2f} s, {rate} Hz, {8 * width}-bit (peak not measured)")
    samples = array.array("h", raw)
    peak = max((abs(s) for s in samples), default=0)
    level = f"peak {peak / 32768:.3f} ({20 * math.log10(peak / 32768):.1f} dBFS)" if peak else "silent (every sample 0)"
    return Described(f"{n / rate:.2f} s, {rate} Hz, {channels} ch, {level}", silent=peak == 0, empty=n == 0)


def _video(data: bytes) -> Described:
    try:
        import av
    except ImportError:
        return Described(f"{len(data)} bytes (install the diffusers extra to count frames)")
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        w, h = stream.codec_context.width, stream.codec_context.height
        rate = float(stream.average_rate or 0)
    seconds = f", {frames / rate:.2f} s" if rate else ""
    return Described(f"{frames} frames {w}x{h} {stream.codec_context.name}{seconds}", empty=frames == 0)
