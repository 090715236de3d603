"""Artifacts as files under one local directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from omnijobs.artifacts.base import Connector


class FileConnector(Connector):
    scheme = "file"

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _inside(self, path: Path) -> Path:
        # URIs can come back from clients; never read or delete outside the root.
        resolved = path.resolve()
        if resolved == self.root or not resolved.is_relative_to(self.root):
            raise ValueError(f"{path} is outside the artifacts directory {self.root}")
        return resolved

    def _path_of(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise ValueError(f"not a local file URI: {uri!r}")
        return self._inside(Path(unquote(parsed.path)))

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        if Path(key).is_absolute():
            raise ValueError(f"artifact key must be relative: {key!r}")
        path = self._inside(self.root / key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A reader, or a crash, must never see half a file: write aside, then rename.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path.as_uri()

    def get(self, uri: str) -> bytes:
        return self._path_of(uri).read_bytes()

    def delete(self, uri: str) -> None:
        self._path_of(uri).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        folder = self._inside(self.root / prefix.strip("/"))
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))
        shutil.rmtree(folder, ignore_errors=True)
        return count
