"""The one place that turns errors into HTTP answers of the shape {"error": {code, message, field}}."""

from __future__ import annotations

import errno
import logging
import math

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from omnijobs.errors import RequestError

log = logging.getLogger(__name__)

# Seconds a client is told to wait when a dependency is down: a restart of Postgres or Redis takes a few.
OUTAGE_RETRY_AFTER_S = 5
# OSError numbers that mean "the storage is full", for uploads and stored inputs.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def error_body(code: str, message: str, field: str | None = None) -> dict:
    return {"error": {"code": code, "message": _sendable(message), "field": _sendable(field)}}


def _sendable(text: str | None) -> str | None:
    """Messages echo client input; a lone surrogate in it would make the answer itself fail to encode."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _answer(status: int, code: str, message: str, field: str | None = None, headers: dict | None = None
            ) -> JSONResponse:
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)


def _unavailable(what: str, exc: Exception) -> JSONResponse:
    log.warning("%s unreachable: %s: %s", what, type(exc).__name__, exc)
    return _answer(503, "unavailable", f"the {what} is unreachable right now; try again shortly. A submit sent "
                   "with an Idempotency-Key can be retried safely", headers={"Retry-After": str(OUTAGE_RETRY_AFTER_S)})


def _body_error(exc: BaseException | None) -> str | None:
    """Why FastAPI could not parse a body, when it only says "There was an error parsing the body"."""
    if isinstance(exc, RecursionError):
        return "request body is nested too deeply to parse"
    if isinstance(exc, UnicodeDecodeError):
        return "request body is not valid JSON: it is not UTF-8 text"
    if isinstance(exc, ValueError):
        return f"request body is not valid JSON: {exc}"
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        retry_after = getattr(exc, "retry_after", None)  # 429: when admission may accept again
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return _answer(exc.status, exc.code, exc.message, exc.field, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        if first.get("type") == "json_invalid":
            detail = (first.get("ctx") or {}).get("error") or "it does not parse"
            where = first["loc"][1] if len(first.get("loc", ())) > 1 else None
            at = f" at character {where}" if isinstance(where, int) else ""
            return _answer(400, "invalid_json", f"request body is not valid JSON: {detail}{at}")
        if tuple(first.get("loc", ())) == ("body",) and isinstance(first.get("input"), bytes | bytearray):
            # FastAPI hands over the raw bytes when the Content-Type is not JSON.
            return _answer(400, "invalid_json", "request body must be JSON, sent with Content-Type: application/json")
        field = ".".join(loc) or None
        message = first.get("msg", "invalid request")
        if isinstance(first.get("input"), float) and not math.isfinite(first["input"]):
            message = "numbers must be finite (NaN and Infinity are not JSON)"
        return _answer(422, "invalid_request", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and (why := _body_error(exc.__cause__)):
            return _answer(400, "invalid_json", why)
        codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 401: "unauthorized",
                 403: "forbidden", 429: "too_many_requests"}
        return _answer(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail),
                       headers=getattr(exc, "headers", None))

    _install_outages(app)


def _install_outages(app: FastAPI) -> None:
    """Dependency outages are 503 + Retry-After with the error object, never a 500 or a hang."""

    @app.exception_handler(sqlalchemy.exc.OperationalError)
    @app.exception_handler(sqlalchemy.exc.InterfaceError)
    @app.exception_handler(sqlalchemy.exc.TimeoutError)  # no pooled connection came free in time
    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        return _unavailable("database", exc)

    @app.exception_handler(sqlalchemy.exc.DBAPIError)
    async def _database_error(_: Request, exc: sqlalchemy.exc.DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:  # the connection dropped mid-statement (a restart)
            return _unavailable("database", exc)
        raise exc

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    @app.exception_handler(kombu.exceptions.OperationalError)
    async def _broker_down(_: Request, exc: Exception) -> JSONResponse:
        return _unavailable("broker", exc)

    @app.exception_handler(OSError)
    async def _storage_full(_: Request, exc: OSError) -> JSONResponse:
        if exc.errno not in _FULL:
            raise exc
        log.error("artifact storage full: %s", exc)
        return _answer(507, "insufficient_storage", "the service's file storage is full; nothing was stored. "
                       "Try again later", headers={"Retry-After": "60"})
