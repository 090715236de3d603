"""/v1/files: upload an input file, read its metadata."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from api.auth import owner_scope
from api.deps import MediaDep, PrincipalDep, SettingsDep
from api.schemas import ErrorResponse
from api.uploads import FIELD, read_upload

router = APIRouter(prefix="/v1/files", tags=["files"])


class FilePublic(BaseModel):
    id: str
    kind: str
    content_type: str
    bytes: int
    filename: str | None
    created_at: datetime


ERRORS = {c: {"model": ErrorResponse} for c in (400, 401, 404, 413, 422)}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [FIELD], "properties": {FIELD: {"type": "string", "format": "binary"}},
}}}}}


@router.post("", status_code=201, response_model=FilePublic, responses=ERRORS, openapi_extra=UPLOAD_BODY)
async def upload_file(request: Request, media: MediaDep, settings: SettingsDep, principal: PrincipalDep) -> FilePublic:
    """An image, audio clip or video for later jobs: a job input then says "file:<id>"."""
    data, filename = await read_upload(request, settings.upload_max_bytes)
    return FilePublic(**(await run_in_threadpool(media.upload, data, filename=filename, owner=principal.id)).public())


@router.get("/{file_id}", response_model=FilePublic, responses=ERRORS)
def get_file(file_id: str, media: MediaDep, principal: PrincipalDep) -> FilePublic:
    return FilePublic(**media.files.get(file_id, owner=owner_scope(principal)).public())
