"""Liveness and readiness.

NOTE: both are async and never touch the thread pool the other routes share: when slow clients
or a stalled database hold every pooled thread, /healthz must still answer, and /readyz must say
which dependency is down instead of waiting in line behind it.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_S = 3.0
# A few threads of the health checks' own: a blocking driver call cannot run on the event loop.
_checks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when the database and the broker both answer; each check says ok or why not."""
    db, broker = await asyncio.gather(_check(_ping_db, request), _check(_ping_broker, request))
    checks = {"database": db, "broker": broker}
    down = [name for name, state in checks.items() if state != "ok"]
    body = {"status": "ok" if not down else "unavailable", "checks": checks}
    if down:
        body["down"] = down
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse(body)


async def _check(fn, request: Request) -> str:
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(_checks, fn, request), CHECK_TIMEOUT_S)
        return "ok"
    except TimeoutError:
        return f"error: no answer within {CHECK_TIMEOUT_S:g} s"
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"[:300]


def _ping_db(request: Request) -> None:
    with request.app.state.store.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _ping_broker(request: Request) -> None:
    with request.app.state.celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
