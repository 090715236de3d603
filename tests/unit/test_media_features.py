"""WAV decoding into model samples (every PCM width, resampled, mono) and WAV encoding of outputs."""

import io
import wave

import numpy as np
import pytest

from omnijobs.engines.base import Media
from omnijobs.engines.media_features import decode_image, decode_wav, encode_wav
from omnijobs.errors import FatalStageError


def pcm(width: int, rate: int = 8000, channels: int = 2) -> Media:
    x = np.sin(2 * np.pi * 100 * np.arange(rate) / rate) * 0.5
    if width == 1:
        raw = (x * 127 + 128).astype(np.uint8).repeat(channels).tobytes()
    elif width == 3:
        raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in (x * (2**23 - 1)).astype(int).repeat(channels))
    else:
        raw = (x * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}").repeat(channels).tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return Media(buf.getvalue(), "audio/wav")


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_every_pcm_width_decodes_to_the_same_mono_signal(width):
    samples = decode_wav(pcm(width), 16000)
    assert samples.dtype == np.float32 and samples.shape == (16000,)  # one second, resampled 8 -> 16 kHz
    assert samples.max() == pytest.approx(0.5, abs=0.01) and samples.min() == pytest.approx(-0.5, abs=0.01)


def test_undecodable_media_fail_the_row_with_a_clear_error():
    with pytest.raises(FatalStageError, match="not a PCM WAV"):
        decode_wav(Media(pcm(2).data[:20], "audio/wav"), 16000)
    with pytest.raises(FatalStageError, match="not a readable image"):
        decode_image(Media(b"\x89PNG\r\n\x1a\n truncated", "image/png"))


def test_encode_wav_round_trips_at_the_given_rate():
    out = encode_wav(np.array([0.0, 0.5, -0.5, 2.0]), 24000)
    assert out.content_type == "audio/wav"
    with wave.open(io.BytesIO(out.data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (24000, 1, 2, 4)
        assert np.frombuffer(w.readframes(4), "<i2").tolist() == [0, 16384, -16384, 32767]  # rounded; 2.0 clipped


def test_encode_wav_rounds_quiet_samples_and_silences_nan():
    out = encode_wav(np.array([1e-4, -1e-4, np.nan, -np.inf]), 24000)
    with wave.open(io.BytesIO(out.data)) as w:
        assert np.frombuffer(w.readframes(4), "<i2").tolist() == [3, -3, 0, -32767]
