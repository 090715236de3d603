"""Range, If-Range and If-None-Match decisions of output downloads (pure)."""

from __future__ import annotations

import pytest

from omnijobs.downloads import byte_range, etag_of, prepare
from omnijobs.outputs import OutputFile

DATA = bytes(range(256)) * 4  # 1024 bytes
OUT = OutputFile(DATA, "audio/wav", "audio.wav")


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("", None), ("bytes=0-99", (0, 99)), ("bytes=1000-", (1000, 1023)), ("bytes=-24", (1000, 1023)),
    ("bytes=-5000", (0, 1023)), ("bytes=10-5000", (10, 1023)), ("bytes=1024-", False), ("bytes=-0", False),
    ("bytes=0-1,5-9", None), ("items=0-1", None), ("bytes=9-3", None), ("bytes=-", None), (" BYTES = 2 - 3 ", (2, 3)),
])
def test_byte_range(header, expected):
    assert byte_range(header, len(DATA)) == expected


def test_full_partial_unsatisfiable_and_not_modified():
    full = prepare(OUT)
    assert (full.status, full.body, full.headers["Content-Length"]) == (200, DATA, "1024")
    assert full.headers["Accept-Ranges"] == "bytes" and full.headers["ETag"] == etag_of(DATA)

    part = prepare(OUT, range_header="bytes=100-199")
    assert (part.status, part.body) == (206, DATA[100:200])
    assert part.headers["Content-Range"] == "bytes 100-199/1024" and part.headers["Content-Length"] == "100"

    past = prepare(OUT, range_header="bytes=2000-")
    assert (past.status, past.body, past.headers["Content-Range"]) == (416, b"", "bytes */1024")

    etag = full.headers["ETag"]
    assert prepare(OUT, if_none_match=etag).status == 304
    assert prepare(OUT, if_none_match=f'"other", W/{etag}').status == 304
    assert prepare(OUT, if_none_match='"other"').status == 200

    # If-Range: the range only while the client's copy is this version.
    assert prepare(OUT, range_header="bytes=0-9", if_range=etag).status == 206
    stale = prepare(OUT, range_header="bytes=0-9", if_range='"stale"')
    assert (stale.status, stale.body) == (200, DATA)


def test_etag_changes_with_the_bytes():
    assert etag_of(DATA) != etag_of(DATA[:-1])
