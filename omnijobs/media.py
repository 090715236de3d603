"""Recognising and checking the bytes of a media input before anything is stored.

The client's own content type is never trusted: the kind and format come from the bytes, and a
file is accepted only if it decodes (images, WAV) or its container is whole (MP4, WebM).
"""

from __future__ import annotations

import io
import struct
import warnings
import wave
from dataclasses import dataclass

from omnijobs.errors import InvalidInput, RequestError, TooLarge

KINDS = ("image", "audio", "video")

# Pillow format name -> content type. Only decoders we accept are ever tried.
IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
EXTENSIONS = {
    "image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif",
    "audio/wav": ".wav", "video/mp4": ".mp4", "video/webm": ".webm",
}
SUPPORTED = {"image": "PNG, JPEG, WebP, GIF", "audio": "WAV (PCM)", "video": "MP4, WebM"}

# ISO-BMFF brands that are not video: HEIF/AVIF still images and MPEG-4 audio.
_BMFF_NOT_VIDEO = {
    b"heic": ("image", "image/heic"), b"heix": ("image", "image/heic"), b"mif1": ("image", "image/heif"),
    b"msf1": ("image", "image/heif"), b"avif": ("image", "image/avif"), b"avis": ("image", "image/avif"),
    b"M4A ": ("audio", "audio/mp4"), b"M4B ": ("audio", "audio/mp4"),
}


# Top-level boxes walked in an MP4 before it is refused: a plain file has a handful, a fragmented one
# two per fragment; a file made of a million empty boxes would otherwise cost seconds of CPU.
MP4_MAX_BOXES = 10_000
# Elements in a WebM's EBML header (a real one has about seven).
EBML_HEADER_MAX_ELEMENTS = 64


@dataclass(frozen=True)
class Checked:
    kind: str
    content_type: str
    nbytes: int

    @property
    def extension(self) -> str:
        return EXTENSIONS.get(self.content_type, "")


def sniff(data: bytes) -> tuple[str, str] | None:
    """(kind, content type) guessed from the first bytes, supported or not; None if unknown."""
    head = data[:64]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image", "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image", "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", "image/webp"
    if head.startswith(b"BM"):
        return "image", "image/bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image", "image/tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio", "audio/wav"
    if head.startswith(b"fLaC"):
        return "audio", "audio/flac"
    if head.startswith(b"OggS"):
        return "audio", "audio/ogg"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio", "audio/mpeg"
    if head[4:8] == b"ftyp":
        return _BMFF_NOT_VIDEO.get(head[8:12], ("video", "video/mp4"))
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video", "video/webm"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video", "video/x-msvideo"
    return None


def validate(data: bytes, *, expect: str | None, max_pixels: int, field: str | None = None) -> Checked:
    """Check `data` is a whole file of a supported format (of kind `expect`, if given).

    Raises InvalidInput (422) for anything unreadable or unsupported, TooLarge (413) for an image
    over `max_pixels`.
    """
    if not data:
        raise InvalidInput("media input is empty", field=field)
    found = sniff(data)
    wanted = expect or (found[0] if found else None)
    if found is None:
        what = f"an {wanted}" if wanted == "image" else f"a {wanted} file" if wanted else "a media file"
        raise InvalidInput(f"input is not {what} of a known format (supported: {_supported(wanted)})", field=field)
    kind, content_type = found
    if kind != wanted:
        raise InvalidInput(f"input must be {wanted}, got {content_type}", field=field)
    if content_type not in EXTENSIONS:
        raise InvalidInput(f"unsupported {kind} format {content_type} (supported: {SUPPORTED[kind]})", field=field)
    if kind == "image":
        content_type = _check_image(data, max_pixels, field)
    elif kind == "audio":
        _check_wav(data, field)
    elif content_type == "video/mp4":
        _check_mp4(data, field)
    else:
        _check_webm(data, field)
    return Checked(kind, content_type, len(data))


def _supported(kind: str | None) -> str:
    return SUPPORTED[kind] if kind in SUPPORTED else "; ".join(f"{k}: {v}" for k, v in SUPPORTED.items())


def _check_image(data: bytes, max_pixels: int, field: str | None) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Our own pixel limit below decides; Pillow's bomb warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS)) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise TooLarge(
                        f"image is {width}x{height} = {width * height} pixels; the limit (media_max_pixels) is "
                        f"{max_pixels}", field=field,
                    )
                if width < 1 or height < 1:
                    raise InvalidInput("image has no pixels", field=field)
                fmt = img.format
                # NOTE: decoding the (first) frame is what finds truncated or corrupt pixel data;
                # the pixel limit above bounds its cost.
                img.load()
    except RequestError:
        raise
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"image exceeds the pixel limit (media_max_pixels={max_pixels})", field=field) from exc
    except UnidentifiedImageError as exc:
        raise InvalidInput(f"input is not a readable image (supported: {SUPPORTED['image']})", field=field) from exc
    except Exception as exc:  # NOTE: decoders fail on hostile bytes in many ways; every one is the client's
        raise InvalidInput(f"image is truncated or corrupt: {exc}", field=field) from exc
    return IMAGE_FORMATS[fmt]


def _check_wav(data: bytes, field: str | None) -> None:
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            if not 1 <= channels <= 32 or width not in (1, 2, 3, 4) or not 1000 <= rate <= 768_000:
                raise InvalidInput(
                    f"WAV has an unusable format ({channels} channels, {width * 8}-bit, {rate} Hz)", field=field
                )
            if frames == 0:
                raise InvalidInput("WAV has no audio frames", field=field)
            got = len(w.readframes(frames))
    except wave.Error as exc:
        raise InvalidInput(f"WAV is not readable PCM audio ({exc}); supported: {SUPPORTED['audio']}",
                           field=field) from exc
    except RequestError:
        raise
    except (EOFError, struct.error) as exc:
        raise InvalidInput("WAV is truncated: its header is incomplete", field=field) from exc
    except Exception as exc:
        raise InvalidInput(f"WAV is corrupt: {exc}", field=field) from exc
    expected = frames * channels * width
    if got < expected:
        raise InvalidInput(f"WAV is truncated: header promises {expected} bytes of audio, found {got}", field=field)


def _check_mp4(data: bytes, field: str | None) -> None:
    """Walk the top-level boxes: each must fit in the file, and a movie header (moov) must exist."""
    pos, seen, count = 0, set(), 0
    while pos < len(data):
        if len(data) - pos < 8:
            raise InvalidInput("MP4 is truncated inside a box header", field=field)
        size, box = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            if len(data) - pos < 16:
                raise InvalidInput("MP4 is truncated inside a box header", field=field)
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
            header = 16
        elif size == 0:
            size = len(data) - pos  # the last box runs to the end of the file
        if size < header:
            raise InvalidInput(f"MP4 box '{box.decode('latin-1')}' has an invalid size", field=field)
        if pos + size > len(data):
            raise InvalidInput(f"MP4 is truncated: box '{box.decode('latin-1')}' runs past the end", field=field)
        seen.add(box)
        pos += size
        count += 1
        if count >= MP4_MAX_BOXES and pos < len(data):
            raise InvalidInput(f"MP4 has more than {MP4_MAX_BOXES} top-level boxes; a video has a few", field=field)
    if b"moov" not in seen:
        raise InvalidInput("MP4 has no movie header (moov box)", field=field)


def _vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int, bool]:
    """An EBML variable-length integer at `pos`: (value, next position, all value bits set)."""
    if pos >= len(data) or data[pos] == 0:
        raise ValueError("bad EBML number")
    length = 8 - data[pos].bit_length() + 1
    if pos + length > len(data):
        raise ValueError("truncated EBML number")
    value = int.from_bytes(data[pos:pos + length], "big")
    if not keep_marker:
        value &= (1 << (7 * length)) - 1
    return value, pos + length, value == (1 << (7 * length)) - 1


def _check_webm(data: bytes, field: str | None) -> None:
    """The EBML header must say DocType webm, and a Segment that fits in the file must follow."""
    try:
        _, pos, _ = _vint(data, 0, keep_marker=True)
        size, pos, _ = _vint(data, pos, keep_marker=False)
        end = pos + size
        if end > len(data):
            raise ValueError("truncated EBML header")
        doctype, elements = None, 0
        while pos < end:
            elements += 1
            if elements > EBML_HEADER_MAX_ELEMENTS:
                raise ValueError(f"EBML header has more than {EBML_HEADER_MAX_ELEMENTS} elements")
            element, pos, _ = _vint(data, pos, keep_marker=True)
            length, pos, _ = _vint(data, pos, keep_marker=False)
            if element == 0x4282:
                doctype = data[pos:pos + length].rstrip(b"\x00")
            pos += length
        if doctype != b"webm":
            raise InvalidInput(f"unsupported video container (DocType {doctype!r}); supported: {SUPPORTED['video']}",
                               field=field)
        segment, pos, _ = _vint(data, end, keep_marker=True)
        if segment != 0x18538067:
            raise ValueError("no Segment after the EBML header")
        length, pos, unknown = _vint(data, pos, keep_marker=False)
        if (not unknown and pos + length > len(data)) or pos >= len(data):
            raise ValueError("Segment runs past the end")
    except ValueError as exc:
        raise InvalidInput(f"WebM is truncated or corrupt: {exc}", field=field) from exc
