"""ASGI access log: one structured line per HTTP request and per WebSocket connection.

It sits at the outermost ASGI edge so it sees both protocols the same way: it gives each
request or connection a request id (the client's ``X-Request-ID`` when it is sane, else a
new one), binds it to structlog's context so every line logged while serving carries it,
returns it in the response headers, and logs method/path, status or close code, duration
and client IP when the request or connection ends.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from asgiref.typing import ASGIReceiveCallable, ASGISendCallable

logger = structlog.get_logger("oasis.access")

REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{8,128}$")

Scope = dict[str, Any]
Message = dict[str, Any]


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER and _SANE_REQUEST_ID.match(value):
            return str(value.decode("ascii"))
    return uuid.uuid4().hex


def _log_finished(event: str, scope: Scope, started: float, **fields: Any) -> None:
    client = scope.get("client")
    logger.info(
        event,
        path=scope.get("path"),
        **fields,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
        client_ip=client[0] if client else None,
    )


class AccessLogMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        request_id = request_id_from(scope)
        started = time.perf_counter()
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())],
                }
            await send(message)  # type: ignore[arg-type]

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                _log_finished(
                    "http_request",
                    scope,
                    started,
                    method=scope.get("method"),
                    status=status if status is not None else 500,
                )

    async def _websocket(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        request_id = request_id_from(scope)
        started = time.perf_counter()
        outcome: dict[str, Any] = {"accepted": False, "close_code": None, "closed_by": None}

        async def watched_receive() -> Any:
            message = await receive()
            if message["type"] == "websocket.disconnect" and outcome["close_code"] is None:
                outcome["close_code"] = message.get("code", 1005)
                outcome["closed_by"] = "client"
            return message

        async def watched_send(message: Message) -> None:
            if message["type"] == "websocket.accept":
                outcome["accepted"] = True
            elif message["type"] == "websocket.close" and outcome["close_code"] is None:
                # A close before accept is a refusal (daphne answers it with HTTP 403).
                outcome["close_code"] = message.get("code", 1000)
                outcome["closed_by"] = "server"
            await send(message)  # type: ignore[arg-type]

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, watched_receive, watched_send)
            finally:
                _log_finished(
                    "websocket_connection",
                    scope,
                    started,
                    accepted=outcome["accepted"],
                    close_code=outcome["close_code"] if outcome["close_code"] is not None else 1006,
                    closed_by=outcome["closed_by"] or "abnormal",
                )
