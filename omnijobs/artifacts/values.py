"""Moving a stage's port values between database rows and connectors.

Small values (text, token ids, JSON) stay inline in the row. Tensors (safetensors), media
(PNG, WAV, MP4...) and oversized JSON go through a connector, and the row keeps a reference
(`refs.make_ref`). The queue message never carries any of it.
"""

from __future__ import annotations

import json
import mimetypes
import socket
from typing import Any
from urllib.parse import urlparse

from omnijobs.artifacts.base import Connector, new_key
from omnijobs.artifacts.factory import connector_for_uri, make_connector
from omnijobs.artifacts.refs import is_ref, make_ref
from omnijobs.artifacts.tensors import bytes_to_tensors, tensors_to_bytes
from omnijobs.engines.base import Media
from omnijobs.errors import FatalStageError, RetryableStageError

MEDIA_TYPES = ("image", "audio", "video")
# mimetypes has no entry, or a surprising one, for these.
_EXTENSIONS = {"audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "video/mp4": ".mp4",
               "image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "audio/mpeg": ".mp3"}


def extension_for(content_type: str) -> str:
    return _EXTENSIONS.get(content_type) or mimetypes.guess_extension(content_type) or ""


class StageValues:
    """Stores a stage's outputs and loads its inputs.

    `transit` holds values only the next stages read; `durable` holds the job's final outputs,
    which must outlive the job's processes (shared memory is transit only: it is freed when the
    job ends, so final outputs then go to the file store).
    """

    def __init__(self, settings, transit: Connector | None = None, durable: Connector | None = None):
        self.settings = settings
        self.transit = transit or make_connector(settings)
        if durable is None:
            durable = self.transit if self.transit.scheme != "shm" else _file_store(settings)
        self.durable = durable
        self.inline_max_bytes = settings.inline_max_bytes
        self.host = settings.worker_hostname or socket.gethostname()
        self._readers: dict[str, Connector] = {self.transit.scheme: self.transit, self.durable.scheme: self.durable}

    # ------------------------------------------------------------------ outputs

    def store(self, job_id: str, stage: str, outputs: dict[str, Any], port_types: dict[str, str],
              final_ports: set[str]) -> dict[str, Any]:
        """The row form of a stage's outputs: inline values and references."""
        row = {}
        for port, value in outputs.items():
            if port not in port_types:
                continue
            store = self.durable if port in final_ports else self.transit
            row[port] = self._store_one(store, job_id, stage, port, port_types[port], value)
        return row

    def _store_one(self, store: Connector, job_id: str, stage: str, port: str, type_: str, value: Any) -> Any:
        if type_ == "tensor":
            if not isinstance(value, dict) or not all(_is_tensor(t) for t in value.values()):
                raise FatalStageError(f"output '{port}' must be a dict of tensors, got {type(value).__name__}")
            data = tensors_to_bytes(value)
            return self._put(store, job_id, stage, port, "tensor", data, "application/vnd.safetensors",
                             ".safetensors")
        if type_ in MEDIA_TYPES:
            if not isinstance(value, Media):
                raise FatalStageError(f"output '{port}' must be Media ({type_}), got {type(value).__name__}")
            return self._put(store, job_id, stage, port, type_, value.data, value.content_type,
                             extension_for(value.content_type))
        encoded = json.dumps(value, ensure_ascii=False).encode()
        if len(encoded) <= self.inline_max_bytes:
            return value
        return self._put(store, job_id, stage, port, "json", encoded, "application/json", ".json")

    def _put(self, store: Connector, job_id: str, stage: str, port: str, type_: str, data: bytes,
             content_type: str, ext: str) -> dict[str, Any]:
        try:
            uri = store.put(new_key(job_id, stage, port, ext), data, content_type)
        except RetryableStageError:
            raise
        except OSError as exc:  # disk or shared memory full: another attempt may find room
            raise RetryableStageError(f"could not store output '{port}': {exc}") from exc
        ref = make_ref(uri, type_, content_type, len(data))
        if store.scheme == "shm":
            # Shared memory is only readable on this host; a consumer elsewhere must say so clearly.
            ref["host"] = self.host
        return ref

    # ------------------------------------------------------------------ inputs

    def load(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The engine form of a stage's inputs: references replaced by tensors, Media or JSON."""
        return {port: self.load_value(value) if is_ref(value) else value for port, value in inputs.items()}

    def load_value(self, ref: dict[str, Any]) -> Any:
        uri = ref["artifact"]
        if ref.get("host") not in (None, self.host):
            raise FatalStageError(
                f"input {uri} is in shared memory on host {ref['host']}, which this worker ({self.host}) cannot "
                "read; stages on several hosts need OMNIJOBS_ARTIFACTS=s3"
            )
        try:
            data = self.reader(uri).get(uri)
        except FileNotFoundError as exc:
            raise FatalStageError(f"input artifact {uri} is gone (expired or cleaned up)") from exc
        type_ = ref.get("type")
        if type_ == "tensor":
            return bytes_to_tensors(data)
        if type_ == "json":
            return json.loads(data)
        return Media(data, ref.get("content_type") or "application/octet-stream")

    def reader(self, uri: str) -> Connector:
        scheme = urlparse(uri).scheme
        if scheme not in self._readers:
            self._readers[scheme] = connector_for_uri(uri, self.settings)
        return self._readers[scheme]

    def delete(self, refs: list[dict[str, Any]]) -> int:
        """Delete these artifacts; missing ones are fine, so cleanup can run more than once."""
        removed = 0
        for ref in refs:
            uri = ref["artifact"]
            if ref.get("host") not in (None, self.host):
                continue  # another host's shared memory; that host's cleanup frees it
            self.reader(uri).delete(uri)
            removed += 1
        return removed


def _file_store(settings) -> Connector:
    from omnijobs.artifacts.file import FileConnector

    return FileConnector(settings.artifacts_dir)


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "dtype")
