"""/v1/jobs/{id}/outputs/{name}: download a file output."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from fastapi.concurrency import run_in_threadpool

from api.auth import owner_scope
from api.deps import PrincipalDep, StoreDep, ValuesDep
from api.schemas import ErrorResponse
from omnijobs.outputs import read_output

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get(
    "/{job_id}/outputs/{name}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the output's bytes"},
               **{c: {"model": ErrorResponse} for c in (404, 410)}},
)
async def download_output(
    job_id: str, name: Annotated[str, Path(max_length=64)], store: StoreDep, values: ValuesDep,
    principal: PrincipalDep,
) -> Response:
    out = await run_in_threadpool(read_output, store, values, job_id, name, owner_scope(principal))
    return Response(
        out.data, media_type=out.content_type,
        headers={"Content-Disposition": f'attachment; filename="{out.filename}"', "Cache-Control": "private"},
    )
