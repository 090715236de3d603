"""FileStore: the rows of uploaded input files."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine

from omnijobs.errors import NotFound
from omnijobs.store.db import make_sessions
from omnijobs.store.tables import InputFile


@dataclass(frozen=True)
class FileView:
    id: uuid.UUID
    owner: str | None
    artifact: str
    kind: str
    content_type: str
    bytes: int
    filename: str | None
    created_at: datetime

    def public(self) -> dict:
        """What the owner sees: never the artifact URI, which names the storage backend."""
        return {"id": str(self.id), "kind": self.kind, "content_type": self.content_type, "bytes": self.bytes,
                "filename": self.filename, "created_at": self.created_at}


class FileStore:
    def __init__(self, engine: Engine):
        self._sessions = make_sessions(engine)

    def add(self, *, file_id: uuid.UUID, owner: str | None, artifact: str, kind: str, content_type: str,
            nbytes: int, filename: str | None) -> FileView:
        row = InputFile(id=file_id, owner=owner, artifact=artifact, kind=kind, content_type=content_type,
                        bytes=nbytes, filename=filename, created_at=datetime.now(UTC))
        with self._sessions.begin() as s:
            s.add(row)
        return _view(row)

    def get(self, file_id: str | uuid.UUID, owner: str | None = None, field: str = "id") -> FileView:
        """The file if it exists and (when `owner` is given) belongs to that owner; else NotFound.

        Another owner's file answers exactly like a missing one, so ids cannot be probed.
        """
        try:
            key = file_id if isinstance(file_id, uuid.UUID) else uuid.UUID(str(file_id))
        except ValueError:
            raise NotFound(f"no file '{file_id}'", field=field) from None
        with self._sessions() as s:
            row = s.get(InputFile, key)
            if row is None or (owner is not None and row.owner != owner):
                raise NotFound(f"no file '{file_id}'", field=field)
            return _view(row)


def _view(row: InputFile) -> FileView:
    return FileView(id=row.id, owner=row.owner, artifact=row.artifact, kind=row.kind, content_type=row.content_type,
                    bytes=row.bytes, filename=row.filename, created_at=row.created_at)
