"""A job's media inputs and input uploads: checked whole, then stored, then referenced from rows.

A media input arrives as "file:<id>" (an earlier upload of the same owner), a data URI, or an
http(s) URL. Every one of a job's media inputs is fetched and validated before any is stored, so
a refused request leaves no artifact and no row behind.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from omnijobs.artifacts.base import Connector, new_key
from omnijobs.artifacts.refs import make_ref
from omnijobs.errors import InvalidInput, NotFound, TooLarge
from omnijobs.fetch import FetchSlots, fetch
from omnijobs.media import KINDS, Checked, validate
from omnijobs.pipelines.spec import PipelineSpec
from omnijobs.store.files import FileStore, FileView

log = logging.getLogger(__name__)

# Uploads live under their own folder, apart from any job: several jobs may name one upload.
UPLOADS = "files"
# Set in the reference of an input that names an upload (its file id).
UPLOAD_REF_KEY = "file"
# A job's fetched and inline inputs live under the job's own prefix, so they go when its artifacts
# go; a stage name cannot start with "_", so this never meets a stage's outputs.
JOB_INPUTS = "_inputs"


@dataclass(frozen=True)
class Resolved:
    """The job's inputs with media replaced by references, and what was newly stored for them."""

    inputs: dict[str, Any]
    stored: list[str]


@dataclass(frozen=True)
class _Pending:
    data: bytes
    checked: Checked


class MediaInputs:
    def __init__(self, settings, files: FileStore, connector: Connector):
        self.settings = settings
        self.files = files
        self.connector = connector
        self.fetch_slots = FetchSlots(settings.url_fetch_concurrency, settings.url_fetch_per_key)

    # ---------------------------------------------------------------- uploads

    def upload(self, data: bytes, *, filename: str | None, owner: str | None) -> FileView:
        """Validate and store one uploaded file; the caller has already capped `data` at upload_max_bytes."""
        self._check_size(len(data), "file")
        checked = validate(data, expect=None, max_pixels=self.settings.media_max_pixels, field="file")
        file_id = uuid.uuid4()
        uri = self.connector.put(new_key(UPLOADS, str(file_id), "upload", checked.extension), data,
                                 checked.content_type)
        try:
            return self.files.add(file_id=file_id, owner=owner, artifact=uri, kind=checked.kind,
                                  content_type=checked.content_type, nbytes=checked.nbytes,
                                  filename=_clean_filename(filename))
        except BaseException:
            self.connector.delete(uri)
            raise

    # ---------------------------------------------------------------- job inputs

    def resolve(self, spec: PipelineSpec, inputs: dict[str, Any], owner: str | None,
                job_id: uuid.UUID | None = None) -> Resolved:
        """Replace each media input by a reference to stored, validated bytes.

        Raises a RequestError before anything is stored if any media input is refused.
        """
        media = [name for name, value in inputs.items()
                 if spec.inputs[name].type in KINDS and isinstance(value, str)]
        limit = self.settings.max_media_inputs
        if len(media) > limit:
            raise InvalidInput(f"a job may have at most {limit} media inputs (max_media_inputs); got {len(media)}",
                               field="inputs")
        loaded = {name: self._load(spec.inputs[name].type, inputs[name], f"inputs.{name}", owner) for name in media}
        out, stored = dict(inputs), []
        folder = str(job_id or uuid.uuid4())
        try:
            for name, item in loaded.items():
                if isinstance(item, _Pending):
                    c = item.checked
                    uri = self.connector.put(new_key(folder, JOB_INPUTS, name, c.extension), item.data, c.content_type)
                    stored.append(uri)
                    out[name] = make_ref(uri, c.kind, c.content_type, c.nbytes)
                else:
                    out[name] = item
        except BaseException:
            self.discard(stored)
            raise
        return Resolved(out, stored)

    def discard(self, uris: list[str]) -> None:
        """Remove what `resolve` stored for a job that was then not written."""
        for uri in uris:
            try:
                self.connector.delete(uri)
            except Exception:  # the original error matters more than a failed cleanup
                log.exception("could not remove input artifact %s", uri)

    def _load(self, kind: str, value: str, field: str, owner: str | None) -> _Pending | dict[str, Any]:
        if value.startswith("file:"):
            return self._uploaded(kind, value.removeprefix("file:"), field, owner)
        if value.startswith("data:"):
            data = self._data_uri(value, field)
        elif value.startswith(("https://", "http://")):
            with self.fetch_slots.hold(owner, field):
                data = fetch(value, field=field, max_bytes=self.settings.url_fetch_max_bytes,
                             timeout_s=self.settings.url_fetch_timeout_s,
                             allowed_hosts=self.settings.private_hosts_allowed)
        else:
            raise InvalidInput(f'{kind} input must be "file:<id>", a data: URI or an http(s) URL', field=field)
        return _Pending(data, validate(data, expect=kind, max_pixels=self.settings.media_max_pixels, field=field))

    def _uploaded(self, kind: str, file_id: str, field: str, owner: str | None) -> dict[str, Any]:
        f = self.files.get(file_id, field=field)
        if f.owner != owner:  # another owner's file answers like a missing one: ids must not be probeable
            raise NotFound(f"no file '{file_id}'", field=field)
        if f.kind != kind:
            raise InvalidInput(f"file '{file_id}' is {f.kind} ({f.content_type}); this input takes {kind}",
                               field=field)
        # NOTE: "file" marks a shared upload: cleanup of one job must not delete what other jobs may name.
        return {**make_ref(f.artifact, f.kind, f.content_type, f.bytes), UPLOAD_REF_KEY: str(f.id)}

    def _data_uri(self, value: str, field: str) -> bytes:
        header, sep, payload = value.partition(",")
        if not sep:
            raise InvalidInput("data URI has no ',' before its data", field=field)
        is_base64 = header.lower().endswith(";base64")
        padding = len(payload) - len(payload.rstrip("=")) if is_base64 else 0
        estimate = len(payload) * 3 // 4 - padding if is_base64 else len(payload)
        self._check_size(estimate, field)
        try:
            data = base64.b64decode(payload, validate=True) if is_base64 else unquote_to_bytes(payload)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput("data URI is not valid base64", field=field) from exc
        self._check_size(len(data), field)
        return data

    def _check_size(self, nbytes: int, field: str) -> None:
        limit = self.settings.upload_max_bytes
        if nbytes > limit:
            raise TooLarge(f"media input is {nbytes} bytes; the limit (upload_max_bytes) is {limit}", field=field)


def _clean_filename(name: str | None) -> str | None:
    if not name:
        return None
    # Only the last path part, printable, and short enough for the column.
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in base if ch.isprintable())[:255] or None
