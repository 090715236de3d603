"""Small, real media files made in memory for tests."""

from __future__ import annotations

import io
import struct
import wave


def image(fmt: str = "PNG", size: tuple[int, int] = (8, 6), color=(200, 30, 60)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def wav(frames: int = 1600, rate: int = 16000, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(bytes(range(256)) * (frames * channels * width // 256) + b"\x00" * (frames * channels * width % 256))
    return buf.getvalue()


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def mp4(brand: bytes = b"isom") -> bytes:
    return (_box(b"ftyp", brand + b"\x00\x00\x02\x00" + brand + b"mp41")
            + _box(b"moov", _box(b"mvhd", b"\x00" * 100)) + _box(b"mdat", b"\x01" * 64))


def _ebml(element: int, payload: bytes) -> bytes:
    id_bytes = element.to_bytes((element.bit_length() + 7) // 8, "big")
    return id_bytes + bytes([0x80 | len(payload)]) + payload if len(payload) < 127 else (
        id_bytes + (0x4000 | len(payload)).to_bytes(2, "big") + payload)


def webm(doctype: bytes = b"webm") -> bytes:
    header = _ebml(0x1A45DFA3, _ebml(0x4286, b"\x01") + _ebml(0x4282, doctype) + _ebml(0x4287, b"\x04"))
    return header + _ebml(0x18538067, _ebml(0x1549A966, _ebml(0x2AD7B1, b"\x0f\x42\x40")))
