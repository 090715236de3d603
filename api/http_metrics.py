"""Counts and times every API request, by route template (never the raw path: ids would explode the labels)."""

from __future__ import annotations

import time

from omnijobs.metrics import observe_request


class RequestMetrics:
    """Pure ASGI middleware: the status is the one sent, streamed responses included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            observe_request(scope["method"], template, status["code"], time.perf_counter() - started)
