"""/v1/jobs/{id}/outputs/{name}: download a file output (HEAD, Range/206, ETag/304)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Response
from fastapi.concurrency import run_in_threadpool

from api.auth import owner_scope
from api.deps import PrincipalDep, StoreDep, ValuesDep
from api.schemas import ErrorResponse
from omnijobs.downloads import prepare
from omnijobs.outputs import read_output

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

HeaderValue = Annotated[str | None, Header(max_length=1024)]


async def _download(job_id: str, name: str, store, values, principal, range_header, if_none_match, if_range,
                    head: bool) -> Response:
    out = await run_in_threadpool(read_output, store, values, job_id, name, owner_scope(principal))
    got = prepare(out, range_header=range_header, if_none_match=if_none_match, if_range=if_range)
    # HEAD: the same headers (Content-Length of the body a GET would get), no body.
    return Response(b"" if head else got.body, status_code=got.status, headers=got.headers)


@router.get(
    "/{job_id}/outputs/{name}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the output's bytes"},
               206: {"description": "the bytes of the one range asked for (`Range: bytes=first-last`)"},
               304: {"description": "`If-None-Match` names the output's ETag"},
               416: {"description": "the range starts past the end"},
               **{c: {"model": ErrorResponse} for c in (404, 410)}},
)
async def download_output(
    job_id: str, name: Annotated[str, Path(max_length=64)], store: StoreDep, values: ValuesDep,
    principal: PrincipalDep, range: HeaderValue = None, if_none_match: HeaderValue = None,  # noqa: A002
    if_range: HeaderValue = None,
) -> Response:
    return await _download(job_id, name, store, values, principal, range, if_none_match, if_range, head=False)


@router.head("/{job_id}/outputs/{name}", include_in_schema=False)
async def head_output(
    job_id: str, name: Annotated[str, Path(max_length=64)], store: StoreDep, values: ValuesDep,
    principal: PrincipalDep, range: HeaderValue = None, if_none_match: HeaderValue = None,  # noqa: A002
    if_range: HeaderValue = None,
) -> Response:
    return await _download(job_id, name, store, values, principal, range, if_none_match, if_range, head=True)
