"""A WebSocket that answers pings with the server's clock.

Dashboards use it to show the WebSocket round trip and clock skew; probes use it to check
that the WebSocket half of the ASGI stack (routing, origin validation) is serving.
"""

from __future__ import annotations

import json
import time
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

# RFC 6455 1003: the endpoint cannot accept this kind of data.
CLOSE_UNSUPPORTED_DATA = 1003


class PingConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels ships no types
    async def connect(self) -> None:
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            message: Any = json.loads(text_data or "")
        except ValueError:
            message = None
        if not isinstance(message, dict) or message.get("type") != "ping":
            await self.send(text_data=json.dumps({"type": "error", "error": 'expected {"type": "ping"}'}))
            await self.close(code=CLOSE_UNSUPPORTED_DATA)
            return
        await self.send(
            text_data=json.dumps(
                {"type": "pong", "id": message.get("id"), "server_time_ms": int(time.time() * 1000)}
            )
        )
