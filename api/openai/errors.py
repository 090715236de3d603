"""Errors on the OpenAI-compatible routes, in OpenAI's shape, so its clients raise their usual classes.

`{"error": {"message", "type", "param", "code"}}`; the native routes keep their own shape.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from omnijobs.errors import RequestError

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 409: "invalid_request_error", 410: "invalid_request_error",
         413: "invalid_request_error", 429: "rate_limit_error"}
JOB_HEADER = "OmniJobs-Job-Id"


class OpenAIError(Exception):
    """An answer that is not the job's result: a failed or canceled job, or a wait that ran out.

    Sent with `x-should-retry: false`: retrying would submit another job.
    """

    def __init__(self, status: int, message: str, code: str, job_id: str | None = None,
                 kind: str = "server_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.job_id, self.kind = status, message, code, job_id, kind


def error_response(status: int, message: str, kind: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _from_request_error(exc: RequestError) -> JSONResponse:
    # OpenAI answers invalid parameters with 400; ours are 422 on the native routes.
    status = 400 if exc.status == 422 else exc.status
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if exc.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="omnijobs"'}
    return error_response(status, exc.message, TYPES.get(status, "invalid_request_error"), exc.field, exc.code,
                          headers)


def _from_validation(exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        message = "request body is not valid JSON"
    elif param:
        message = f"{param}: {message}"
    return error_response(400, message, "invalid_request_error", param, "invalid_value")


class OpenAIRoute(APIRoute):
    """A route whose every error (auth, validation, core, HTTP) leaves in OpenAI's shape."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestError as exc:
                return _from_request_error(exc)
            except RequestValidationError as exc:
                return _from_validation(exc)
            except OpenAIError as exc:
                headers = {"x-should-retry": "false", **({JOB_HEADER: exc.job_id} if exc.job_id else {})}
                return error_response(exc.status, exc.message, exc.kind, None, exc.code, headers)
            except HTTPException as exc:
                kind = TYPES.get(exc.status_code, "invalid_request_error")
                return error_response(exc.status_code, str(exc.detail), kind, headers=getattr(exc, "headers", None))

        return route
