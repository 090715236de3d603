"""Who is calling: `Authorization: Bearer <api key>` on every route but health.

The dashboard (a browser cannot add headers to page loads) may instead send the key in a cookie,
accepted on /admin routes only, for GET only and SameSite=Strict, so a cookie can never authorise
a state change nor reach the client API.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html import escape
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import error_body
from api.schemas import ErrorResponse
from omnijobs.errors import Forbidden, Unauthorized
from omnijobs.store.keys import Principal

PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
RESPONSES = {401: {"model": ErrorResponse, "description": "no API key, or one that is not valid or was revoked"}}
COOKIE = "omnijobs_key"
COOKIE_PATH = "/admin"
LOGIN_PAGE = Path(__file__).parent / "static" / "login.html"

bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                    description="An API key from `omnijobs keys create`, as `Authorization: Bearer <key>`.")


async def authenticate(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal | None:
    """The caller's principal (401 without a valid key). Health routes pass without one.

    NOTE: async, so the health routes pass without taking a thread of the shared pool; the key
    check itself (a database read) runs on that pool.
    """
    if request.url.path in PUBLIC_PATHS:
        return None
    key = creds.credentials if creds else None
    if key is None and request.method in ("GET", "HEAD") and _under_admin(request.url.path):
        key = request.cookies.get(COOKIE)
    if not key:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'", field="Authorization")
    principal = await run_in_threadpool(request.app.state.keys.verify, key)
    if principal is None:
        raise Unauthorized("the API key is not valid or was revoked", field="Authorization")
    return principal


def _under_admin(path: str) -> bool:
    return path == COOKIE_PATH or path.startswith(COOKIE_PATH + "/")


async def require_admin(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    if not principal.admin:
        raise Forbidden("this route needs an admin key", field="Authorization")
    return principal


def owner_scope(principal: Principal) -> str | None:
    """The owner filter for store reads: admins see every job, a key only its own."""
    return None if principal.admin else principal.id


def _csp_hashes(page: str, tag: str) -> str:
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
                    for body in re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S))


def security_headers(page: str | None = None) -> dict[str, str]:
    """Headers for the HTML pages: only their own scripts and styles, never in a frame.

    With `page`, its inline <script> and <style> blocks are allowed by hash and nothing else is;
    without, only files served from this origin.
    """
    scripts = _csp_hashes(page, "script") if page else "'self'"
    styles = _csp_hashes(page, "style") if page else "'self'"
    csp = (f"default-src 'none'; script-src {scripts}; style-src {styles}; img-src 'self' data:; "
           "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": csp, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def install(app: FastAPI) -> None:
    """401s carry `WWW-Authenticate`; a browser opening the dashboard gets a page asking for a key."""

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized):
        headers = {"WWW-Authenticate": 'Bearer realm="omnijobs"'}
        if request.url.path == "/admin" and "text/html" in request.headers.get("accept", ""):
            template = LOGIN_PAGE.read_text()
            page = template.replace("{{message}}", escape(exc.message))
            return HTMLResponse(page, status_code=401, headers={**headers, **security_headers(template)})
        return JSONResponse(error_body(exc.code, exc.message, exc.field), status_code=401, headers=headers)
