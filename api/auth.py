"""Who is calling: `Authorization: Bearer <api key>` on every route but health.

The dashboard (a browser cannot add headers to page loads) may instead send the key in a cookie,
accepted for GET only and SameSite=Strict, so a cookie can never authorise a state change.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import error_body
from api.schemas import ErrorResponse
from omnijobs.errors import Forbidden, Unauthorized
from omnijobs.store.keys import Principal

PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
RESPONSES = {401: {"model": ErrorResponse, "description": "no API key, or one that is not valid or was revoked"}}
COOKIE = "omnijobs_key"
LOGIN_PAGE = Path(__file__).parent / "static" / "login.html"

bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                    description="An API key from `omnijobs keys create`, as `Authorization: Bearer <key>`.")


def authenticate(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal | None:
    """The caller's principal (401 without a valid key). Health routes pass without one."""
    if request.url.path in PUBLIC_PATHS:
        return None
    key = creds.credentials if creds else None
    if key is None and request.method in ("GET", "HEAD"):
        key = request.cookies.get(COOKIE)
    if not key:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'", field="Authorization")
    principal = request.app.state.keys.verify(key)
    if principal is None:
        raise Unauthorized("the API key is not valid or was revoked", field="Authorization")
    return principal


def require_admin(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    if not principal.admin:
        raise Forbidden("this route needs an admin key", field="Authorization")
    return principal


def owner_scope(principal: Principal) -> str | None:
    """The owner filter for store reads: admins see every job, a key only its own."""
    return None if principal.admin else principal.id


def install(app: FastAPI) -> None:
    """401s carry `WWW-Authenticate`; a browser opening the dashboard gets a page asking for a key."""

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized):
        headers = {"WWW-Authenticate": 'Bearer realm="omnijobs"'}
        if request.url.path == "/admin" and "text/html" in request.headers.get("accept", ""):
            page = LOGIN_PAGE.read_text().replace("{{message}}", escape(exc.message))
            return HTMLResponse(page, status_code=401, headers=headers)
        return JSONResponse(error_body(exc.code, exc.message, exc.field), status_code=401, headers=headers)
