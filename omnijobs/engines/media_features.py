"""Decode image/audio inputs into model features and encode waveforms as WAV.

The API validated the bytes already; a stage still fails the row (not the batch) on bytes it
cannot decode, because an artifact may come from another stage.
"""

from __future__ import annotations

import io
import wave

import numpy as np

from omnijobs.engines.base import Media
from omnijobs.errors import FatalStageError


def decode_image(media: Media, port: str = "image"):
    """A PIL RGB image."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(media.data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise FatalStageError(f"input '{port}' is not a readable image ({media.content_type})") from exc
    return image.convert("RGB")


def decode_wav(media: Media, rate: int, port: str = "audio") -> np.ndarray:
    """Mono float32 samples in [-1, 1] at `rate` Hz from PCM WAV bytes."""
    try:
        with wave.open(io.BytesIO(media.data), "rb") as wav:
            channels, width, src_rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise FatalStageError(f"input '{port}' is not a PCM WAV file ({media.content_type}): {exc}") from exc
    frames = frames[: len(frames) - len(frames) % (width * channels)]
    if width not in (1, 2, 3, 4) or not frames:
        raise FatalStageError(f"input '{port}': unsupported or empty WAV ({width * 8}-bit, {len(frames)} bytes)")
    if width == 1:
        samples = (np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:  # 24-bit: sign-extend each little-endian triple into the top of an int32
        triples = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        samples = ((triples[:, 0] << 8) | (triples[:, 1] << 16) | (triples[:, 2] << 24)).astype(np.float32) / 2**31
    else:
        dtype = np.int16 if width == 2 else np.int32
        samples = np.frombuffer(frames, dtype=dtype)
        samples = samples.astype(np.float32) / float(np.iinfo(dtype).max)
    samples = samples.reshape(-1, channels).mean(axis=1)
    return resample(samples, src_rate, rate)


def resample(samples: np.ndarray, src_rate: int, rate: int) -> np.ndarray:
    """Linear-interpolation resampling: enough for speech features, and no extra dependency."""
    if src_rate == rate or samples.size == 0:
        return samples.astype(np.float32)
    n = max(1, round(samples.size * rate / src_rate))
    positions = np.linspace(0, samples.size - 1, n)
    return np.interp(positions, np.arange(samples.size), samples).astype(np.float32)


def encode_wav(samples, rate: int) -> Media:
    """A mono 16-bit PCM WAV from float samples in [-1, 1]: louder samples clip, NaN is silence,
    and each sample rounds to the nearest step (truncation would bias quiet audio towards 0)."""
    samples = np.nan_to_num(np.asarray(samples, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    pcm = np.rint(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())
    return Media(buf.getvalue(), "audio/wav")
