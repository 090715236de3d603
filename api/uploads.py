"""Reading the one file of a multipart upload as it streams in, refusing it once it passes the limit.

The parser runs on the event loop, so the work per body is bounded instead: a few parts, short
headers. A body of thousands of tiny parts (or one endless header) is refused after a few of them,
not parsed to its end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from omnijobs.errors import InvalidInput, TooLarge

FIELD = "file"
# Room for part headers and small extra form fields around the file itself.
OVERHEAD_BYTES = 64 * 1024
# The file and a few small fields clients send beside it (e.g. `purpose`).
MAX_PARTS = 16
# Per part, all header names and values together: a content-disposition and a content-type fit easily.
MAX_HEADER_BYTES = 8 * 1024
FEED_BYTES = 16 * 1024


@dataclass
class _Parts:
    limit: int
    header_field: bytes = b""
    header_value: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    in_file: bool = False
    found: bool = False
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)
    error: Exception | None = None
    parts: int = 0
    header_bytes: int = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda b, s, e: self._header_bytes("header_field", b[s:e]),
            "on_header_value": lambda b, s, e: self._header_bytes("header_value", b[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
        }

    def _part_begin(self) -> None:
        self.headers, self.in_file, self.header_bytes = {}, False, 0
        self.parts += 1
        if self.parts > MAX_PARTS and self.error is None:
            self.error = InvalidInput(f"the upload has more than {MAX_PARTS} parts; send the file in one field "
                                      f"named '{FIELD}'", field=FIELD)

    def _header_bytes(self, name: str, piece: bytes) -> None:
        self.header_bytes += len(piece)
        if self.header_bytes > MAX_HEADER_BYTES:
            if self.error is None:
                self.error = InvalidInput(f"a part's headers exceed {MAX_HEADER_BYTES} bytes", field=FIELD)
            return
        setattr(self, name, getattr(self, name) + piece)

    def _header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field = self.header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        if options.get(b"name") != FIELD.encode():
            return
        if self.found and self.error is None:
            self.error = InvalidInput("send one file per upload", field=FIELD)
        self.in_file = self.found = True
        name = options.get(b"filename")
        self.filename = name.decode("utf-8", "replace") if name else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.in_file or self.error is not None:
            return
        self.data += data[start:end]
        if len(self.data) > self.limit:
            self.error = _too_large(self.limit)


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"upload exceeds the limit (upload_max_bytes) of {limit} bytes", field=FIELD)


async def read_upload(request: Request, limit: int) -> tuple[bytes, str | None]:
    """The bytes and client file name of the form field `file`; 413 as soon as it passes `limit`."""
    mime, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise InvalidInput(f"send the file as multipart/form-data in a field named '{FIELD}'", field=FIELD)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + OVERHEAD_BYTES:
        raise _too_large(limit)
    parts = _Parts(limit)
    parser = MultipartParser(boundary, parts.callbacks())
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit + OVERHEAD_BYTES:
            raise _too_large(limit)
        for at in range(0, len(chunk), FEED_BYTES):  # slices, so a refusal comes after little work
            _feed(parser, chunk[at:at + FEED_BYTES])
            if parts.error is not None:
                raise parts.error
    _feed(parser, None)
    if not parts.found:
        raise InvalidInput(f"no form field named '{FIELD}' in the upload", field=FIELD)
    return bytes(parts.data), parts.filename


def _feed(parser: MultipartParser, chunk: bytes | None) -> None:
    try:
        parser.write(chunk) if chunk is not None else parser.finalize()
    except Exception as exc:  # the parser's own errors: the body is not well-formed multipart
        raise InvalidInput(f"malformed multipart body: {exc}", field=FIELD) from exc
