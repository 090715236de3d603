"""Media inputs against the real Postgres and file store: uploads, data URIs, URLs through a live
HTTP server, the private-address guard on every hop, and nothing written on refusal."""

from __future__ import annotations

import base64
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import func, select

from omnijobs.artifacts.factory import make_connector
from omnijobs.errors import InvalidInput, NotFound, TooLarge
from omnijobs.inputs import MediaInputs
from omnijobs.store.files import FileStore
from omnijobs.store.tables import InputFile, Job, StageRun
from omnijobs.submit import submit
from tests import media_samples as samples
from tests.integration.test_store import Collect

PNG = samples.image("PNG", (16, 12))
WAV = samples.wav(800)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        port = self.server.server_address[1]
        self.server.hosts_seen.append(self.headers.get("Host"))
        routes = {
            "/img.png": (200, {"Content-Type": "image/png"}, PNG),
            "/hop1": (302, {"Location": "/hop2"}, b""),
            "/hop2": (302, {"Location": f"http://127.0.0.1:{port}/img.png"}, b""),
            "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
            "/to-private": (302, {"Location": "http://10.11.12.13/x.png"}, b""),
            "/big": (200, {"Content-Length": str(300_000)}, b"\x00" * 300_000),
            "/missing": (404, {}, b"no"),
            "/text": (200, {"Content-Type": "text/plain"}, b"hello, I am no image"),
        }
        if self.path == "/chunked-big":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"2000\r\n" + b"\x01" * 0x2000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(20):  # drips far past the fetch timeout, one byte at a time
                self.wfile.write(b"\x00")
                self.wfile.flush()
                time.sleep(0.1)
            return
        status, headers, body = routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def http_base():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.hosts_seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.server_ref = server
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def media_settings(settings, tmp_path_factory):
    return settings.model_copy(update={
        "artifacts_dir": tmp_path_factory.mktemp("media-artifacts"), "upload_max_bytes": 100_000,
        "url_fetch_max_bytes": 200_000, "url_fetch_timeout_s": 0.8, "media_max_pixels": 10_000,
        "max_media_inputs": 2, "allowed_private_hosts": "127.0.0.1",
    })


@pytest.fixture(scope="module")
def media(media_settings, store):
    return MediaInputs(media_settings, FileStore(store.engine), make_connector(media_settings))


def _with(media: MediaInputs, **changes) -> MediaInputs:
    return MediaInputs(media.settings.model_copy(update=changes), media.files, media.connector)


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _state(store, root: Path) -> tuple[int, int, int, int]:
    """Rows of jobs, stage runs and files, and files on disk: what a refusal must leave unchanged."""
    with store.engine.connect() as conn:
        rows = tuple(conn.scalar(select(func.count()).select_from(t)) for t in (Job, StageRun, InputFile))
    return (*rows, sum(1 for p in root.rglob("*") if p.is_file()))


def _spec(store):
    return store.pipelines.get("media_echo")


def test_upload_then_file_reference(media, store):
    up = media.upload(PNG, filename="../../cat.png", owner="key-a")
    assert (up.kind, up.content_type, up.bytes, up.filename) == ("image", "image/png", len(PNG), "cat.png")
    assert media.connector.get(up.artifact) == PNG
    resolved = media.resolve(_spec(store), {"prompt": "hi", "image": f"file:{up.id}"}, owner="key-a")
    assert resolved.inputs["image"] == {"artifact": up.artifact, "type": "image", "content_type": "image/png",
                                        "bytes": len(PNG), "file": str(up.id)}
    assert resolved.stored == []  # the upload is referenced, not copied
    with pytest.raises(NotFound):  # another owner's file looks exactly like a missing one
        media.resolve(_spec(store), {"prompt": "hi", "image": f"file:{up.id}"}, owner="key-b")
    with pytest.raises(NotFound):
        media.resolve(_spec(store), {"prompt": "hi", "image": "file:not-a-uuid"}, owner="key-a")
    with pytest.raises(InvalidInput, match="takes audio") as err:
        media.resolve(_spec(store), {"prompt": "hi", "audio": f"file:{up.id}"}, owner="key-a")
    assert err.value.field == "inputs.audio"


def test_data_uri_and_submit_store_a_reference(media, store):
    publisher = Collect()
    job, created = submit(store, store.pipelines, publisher, pipeline="media_echo", media=media,
                          inputs={"prompt": "hi", "image": _data_uri(PNG), "audio": _data_uri(WAV, "audio/wav")})
    assert created and len(publisher.tasks) == 1
    image, audio = job.inputs["image"], job.inputs["audio"]
    assert (image["content_type"], image["bytes"], audio["content_type"]) == ("image/png", len(PNG), "audio/wav")
    assert media.connector.get(image["artifact"]) == PNG and media.connector.get(audio["artifact"]) == WAV
    assert store.get_job(job.id).inputs == job.inputs
    # Stored under the job's own prefix, so the job's cleanup takes them along.
    assert f"/{job.id}/_inputs/image-" in image["artifact"] and f"/{job.id}/_inputs/audio-" in audio["artifact"]


@pytest.mark.parametrize("name,inputs,error,match", [
    ("truncated wav after a good image", {"image": "PNG", "audio": _data_uri(WAV[:-200], "audio/wav")},
     InvalidInput, "WAV is truncated"),
    ("not an image", {"image": _data_uri(b"GIF? no, plain text", "image/gif")}, InvalidInput, "not an image"),
    ("unsupported type", {"image": _data_uri(samples.image("BMP"), "image/bmp")}, InvalidInput, "unsupported"),
    ("too many pixels", {"image": _data_uri(samples.image("PNG", (200, 100)))}, TooLarge, "media_max_pixels"),
    ("too many bytes", {"image": _data_uri(b"\x89PNG" + b"\x00" * 120_000)}, TooLarge, "upload_max_bytes"),
    ("bad base64", {"image": "data:image/png;base64,@@@@"}, InvalidInput, "base64"),
    ("not a reference", {"image": "ftp://example.org/a.png"}, InvalidInput, "file:<id>"),
])
def test_refused_media_writes_nothing(media, store, name, inputs, error, match):
    inputs = {k: _data_uri(PNG) if v == "PNG" else v for k, v in inputs.items()}
    before = _state(store, media.settings.artifacts_dir)
    with pytest.raises(error, match=match):
        submit(store, store.pipelines, Collect(), pipeline="media_echo", media=media, inputs={"prompt": "x", **inputs})
    assert _state(store, media.settings.artifacts_dir) == before


def test_media_input_count_limit(media, store):
    tight = _with(media, max_media_inputs=1)
    with pytest.raises(InvalidInput, match="max_media_inputs"):
        tight.resolve(_spec(store), {"prompt": "x", "image": _data_uri(PNG), "audio": _data_uri(WAV)}, owner=None)


def test_url_fetch_follows_checked_redirects(media, store, http_base):
    for path in ("/img.png", "/hop1"):
        resolved = media.resolve(_spec(store), {"prompt": "x", "image": http_base + path}, owner=None)
        assert media.connector.get(resolved.inputs["image"]["artifact"]) == PNG
        media.discard(resolved.stored)


@pytest.mark.parametrize("path,error,match", [
    ("/to-metadata", InvalidInput, "private or local address"),
    ("/to-private", InvalidInput, "private or local address"),
    ("/big", TooLarge, "url_fetch_max_bytes"),
    ("/chunked-big", TooLarge, "url_fetch_max_bytes"),
    ("/slow", InvalidInput, "timed out"),
    ("/missing", InvalidInput, "HTTP 404"),
    ("/text", InvalidInput, "not an image"),
])
def test_url_fetch_refusals(media, store, http_base, path, error, match):
    before = _state(store, media.settings.artifacts_dir)
    started = time.monotonic()
    with pytest.raises(error, match=match) as err:
        media.resolve(_spec(store), {"prompt": "x", "image": http_base + path}, owner=None)
    assert err.value.field == "inputs.image"
    assert time.monotonic() - started < 2.0  # the timeout bounds the whole download
    assert _state(store, media.settings.artifacts_dir) == before


def test_private_address_refused_unless_allowed(media, store, http_base):
    strict = _with(media, allowed_private_hosts="")
    with pytest.raises(InvalidInput, match="private or local address"):
        strict.resolve(_spec(store), {"prompt": "x", "image": http_base + "/img.png"}, owner=None)
    with pytest.raises(InvalidInput, match="private or local address"):
        strict.resolve(_spec(store), {"prompt": "x", "image": "http://localhost:1/img.png"}, owner=None)


def test_named_host_is_fetched_from_the_checked_address(media, store, http_base):
    # "localhost" is not itself allowed: it is resolved, each address checked (127.0.0.1 is
    # allowed here), and the request goes to that very address with the original Host header.
    server = _Handler.server_ref
    url = http_base.replace("127.0.0.1", "localhost") + "/img.png"
    resolved = media.resolve(_spec(store), {"prompt": "x", "image": url}, owner=None)
    assert media.connector.get(resolved.inputs["image"]["artifact"]) == PNG
    assert server.hosts_seen[-1] == f"localhost:{server.server_address[1]}"
    media.discard(resolved.stored)
