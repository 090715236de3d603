"""Media checks on real encoded bytes: what is accepted, and why the rest is refused."""

from __future__ import annotations

import zlib

import pytest

from omnijobs.errors import InvalidInput, TooLarge
from omnijobs.media import sniff, validate
from tests import media_samples as samples

LIMIT = 10_000


@pytest.mark.parametrize("fmt,content_type", [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                              ("WEBP", "image/webp"), ("GIF", "image/gif")])
def test_images_of_allowed_formats(fmt, content_type):
    data = samples.image(fmt)
    checked = validate(data, expect="image", max_pixels=LIMIT)
    assert (checked.kind, checked.content_type, checked.nbytes) == ("image", content_type, len(data))


def test_kind_is_sniffed_when_not_expected():
    assert validate(samples.wav(), expect=None, max_pixels=LIMIT).content_type == "audio/wav"
    assert validate(samples.mp4(), expect=None, max_pixels=LIMIT).extension == ".mp4"
    assert validate(samples.webm(), expect=None, max_pixels=LIMIT).content_type == "video/webm"


def test_pixel_limit_is_named():
    with pytest.raises(TooLarge, match="media_max_pixels") as err:
        validate(samples.image("PNG", (200, 100)), expect="image", max_pixels=LIMIT, field="inputs.image")
    assert err.value.field == "inputs.image" and err.value.status == 413


def test_pillow_bomb_check_is_a_413_not_a_crash():
    # A valid PNG header claiming 100k x 100k pixels: Pillow's own guard fires while opening.
    data = bytearray(samples.image("PNG", (1, 1)))
    data[16:24] = (100_000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    with pytest.raises(TooLarge, match="media_max_pixels"):
        validate(bytes(data), expect="image", max_pixels=LIMIT)


@pytest.mark.parametrize("name,data,expect,message", [
    ("empty", b"", "image", "empty"),
    ("text as image", b"hello, not an image at all", "image", "not an image"),
    ("truncated png", samples.image("PNG", (64, 64))[:-40], "image", "truncated or corrupt"),
    ("truncated jpeg", samples.image("JPEG", (64, 64))[:200], "image", "truncated or corrupt"),
    ("bmp is not allowed", samples.image("BMP"), "image", "unsupported image format image/bmp"),
    ("wav given for image", samples.wav(), "image", "must be image, got audio/wav"),
    ("truncated wav", samples.wav(1600)[:-100], "audio", "WAV is truncated"),
    ("wav header only", samples.wav(1600)[:30], "audio", "WAV"),
    ("wav with no frames", samples.wav(0), "audio", "no audio frames"),
    ("flac unsupported", b"fLaC" + b"\x00" * 40, "audio", "unsupported audio format audio/flac"),
    ("mp4 without moov", samples.mp4()[:32] + b"\x00\x00\x00\x10mdat" + b"\x00" * 8, "video", "moov"),
    ("truncated mp4", samples.mp4()[:-10], "video", "truncated"),
    ("heic is not video", samples.mp4(b"heic"), "video", "must be video, got image/heic"),
    ("matroska is not webm", samples.webm(b"matroska"), "video", "DocType"),
    ("truncated webm", samples.webm()[:-3], "video", "WebM is truncated"),
    ("png given for video", samples.image(), "video", "must be video"),
])
def test_bad_media_refused(name, data, expect, message):
    with pytest.raises(InvalidInput, match=message) as err:
        validate(data, expect=expect, max_pixels=LIMIT, field="inputs.x")
    assert err.value.field == "inputs.x" and err.value.status == 422


def test_sniff_names_unsupported_formats():
    assert sniff(b"OggS\x00\x02") == ("audio", "audio/ogg")
    assert sniff(b"ID3\x03\x00") == ("audio", "audio/mpeg")
    assert sniff(b"plain text") is None


def test_an_mp4_of_a_million_boxes_is_refused_after_the_box_limit():
    # 8 MB of empty 8-byte boxes after a real file: walking them all cost seconds of CPU.
    flood = samples.mp4() + b"\x00\x00\x00\x08free" * 1_000_000
    with pytest.raises(InvalidInput, match="more than 10000 top-level boxes") as err:
        validate(flood, expect="video", max_pixels=LIMIT, field="file")
    assert err.value.field == "file" and err.value.status == 422


def test_an_mp4_with_many_fragments_is_still_a_video():
    fragmented = samples.mp4() + b"\x00\x00\x00\x08free" * 4000
    assert validate(fragmented, expect="video", max_pixels=LIMIT).content_type == "video/mp4"


def test_a_webm_header_of_endless_elements_is_refused():
    good = samples.webm()
    # An EBML header of 100k empty Void elements (0xEC, size 0) in place of the real one's.
    body = b"\xec\x80" * 100_000
    size = len(body)
    flood = b"\x1a\x45\xdf\xa3" + b"\x01" + size.to_bytes(7, "big") + body + good[good.index(b"\x18\x53\x80\x67"):]
    with pytest.raises(InvalidInput, match="more than 64 elements"):
        validate(flood, expect="video", max_pixels=LIMIT, field="file")
