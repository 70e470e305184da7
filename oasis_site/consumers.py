"""The site's WebSockets: a ping for round-trip probes, and the live feed of the dashboard.

`LiveConsumer` (``/ws/live/``) only joins and leaves channel-layer groups and forwards their
events (HouseStyle: consumers stay thin). A client subscribes to topics, each a group:

- ``candles.<SYMBOL>.<tf>``: closed candles of one series (``candle.update``);
- ``signals`` (``signals.new``), ``orders`` (``order.update``), ``killswitch``
  (``killswitch.update``), ``alerts`` (``alert.update``).

Client → server frames are JSON objects: ``{"type": "subscribe", "topics": [...]}``,
``{"type": "unsubscribe", "topics": [...]}`` and ``{"type": "ping", "id": ...}``. Server →
client: ``subscribed`` (the connection's topics), ``pong``, ``error`` (a request refused, the
socket stays open) and the forwarded events, each with its ``topic``.

Per connection, over a quota the socket is closed with a code and a reason, and counted:
a frame over OASIS_WS_MAX_MESSAGE_BYTES (1009), a binary frame (1003), a frame that is not a
JSON object of a known type (1007), more than OASIS_WS_MAX_MESSAGES_PER_S frames in a second
(4008), more than OASIS_WS_MAX_SUBSCRIPTIONS topics (4009), and, when the
``api_auth_required`` flag is on, an anonymous client (4401). A server stopping closes every
socket with 4503 (`oasis_site.shutdown`): the page reconnects. Origins are checked at the ASGI
edge (`oasis_site.asgi`): a page from another site cannot open the socket at all.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from prometheus_client import Counter, Gauge

from marketdata.core.timeframes import Timeframe
from marketdata.models import Symbol
from oasis_site.access import api_auth_required_async
from oasis_site.shutdown import CLOSE_GOING_AWAY, GOING_AWAY_REASON, socket_closed, socket_opened

# RFC 6455 codes, and ours in the 4000-4999 private range.
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_TOO_BIG = 1009
CLOSE_RATE_LIMITED = 4008
CLOSE_SUBSCRIPTION_QUOTA = 4009
CLOSE_LOGIN_REQUIRED = 4401

TIMEFRAME_VALUES = frozenset(timeframe.value for timeframe in Timeframe)
FIXED_TOPICS = ("signals", "orders", "killswitch", "alerts")
CANDLE_TOPIC = re.compile(r"^candles\.([A-Z0-9]{2,30})\.([0-9]{1,2}[mh])$")

WS_CLOSED = Counter("oasis_ws_closed_total", "Live WebSockets the server closed, by reason.", ["reason"])
WS_FRAMES = Counter("oasis_ws_frames_received_total", "Frames received on live WebSockets.")
WS_CONNECTIONS = Gauge("oasis_ws_connections", "Open live WebSockets.")
WS_EVENTS_SENT = Counter(
    "oasis_ws_events_sent_total", "Events forwarded to live WebSockets, by type.", ["type"]
)


class PingConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels ships no types
    """Answers pings with the server's clock: the WebSocket round trip and clock skew."""

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


class TopicError(ValueError):
    pass


@database_sync_to_async  # type: ignore[untyped-decorator]
def _symbols_known(names: list[str]) -> set[str]:
    return set(Symbol.objects.filter(symbol__in=names).values_list("symbol", flat=True))


class LiveConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels ships no types
    async def connect(self) -> None:
        self.topics: set[str] = set()
        self.window_started = time.monotonic()
        self.window_frames = 0
        self.closing = False
        user = self.scope.get("user")
        await self.accept()
        if await api_auth_required_async() and not (user is not None and user.is_authenticated):
            await self._close(
                CLOSE_LOGIN_REQUIRED, "login required: the api_auth_required flag is on", "login"
            )
            return
        WS_CONNECTIONS.inc()
        self.counted = True
        socket_opened(self)

    async def disconnect(self, code: int) -> None:
        socket_closed(self)
        if getattr(self, "counted", False):
            WS_CONNECTIONS.dec()
            self.counted = False
        for topic in list(getattr(self, "topics", ())):
            await self.channel_layer.group_discard(topic, self.channel_name)
        self.topics = set()

    async def close_going_away(self) -> None:
        """The server is stopping (oasis_site/shutdown.py): the page reconnects elsewhere."""
        if not self.closing:
            await self._close(CLOSE_GOING_AWAY, GOING_AWAY_REASON, "going_away")

    async def _close(self, code: int, reason: str, label: str) -> None:
        self.closing = True
        WS_CLOSED.labels(label).inc()
        await self.send(text_data=json.dumps({"type": "closing", "code": code, "reason": reason}))
        await self.close(code=code, reason=reason)

    # -- client frames ------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return
        WS_FRAMES.inc()
        if not await self._within_rate():
            return
        if bytes_data is not None:
            await self._close(
                CLOSE_UNSUPPORTED_DATA, "binary frames are not accepted: send JSON text", "binary"
            )
            return
        size = len((text_data or "").encode())
        limit = settings.OASIS_WS_MAX_MESSAGE_BYTES
        if size > limit:
            await self._close(
                CLOSE_TOO_BIG, f"frame of {size} bytes is over the {limit}-byte limit", "too_big"
            )
            return
        try:
            message: Any = json.loads(text_data or "")
        except ValueError:
            message = None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "ping":
            await self._send_json(
                {"type": "pong", "id": message.get("id"), "server_time_ms": int(time.time() * 1000)}
            )
        elif kind in ("subscribe", "unsubscribe"):
            topics = message.get("topics")
            if not isinstance(topics, list) or not all(isinstance(topic, str) for topic in topics):
                await self._close(
                    CLOSE_INVALID_PAYLOAD, f"{kind}: 'topics' must be a list of strings", "malformed"
                )
            elif kind == "subscribe":
                await self._subscribe(topics)
            else:
                await self._unsubscribe(topics)
        else:
            await self._close(
                CLOSE_INVALID_PAYLOAD,
                'malformed frame: expected a JSON object with "type" subscribe, unsubscribe or ping',
                "malformed",
            )

    async def _within_rate(self) -> bool:
        now = time.monotonic()
        if now - self.window_started >= 1.0:
            self.window_started, self.window_frames = now, 0
        self.window_frames += 1
        limit = settings.OASIS_WS_MAX_MESSAGES_PER_S
        if self.window_frames > limit:
            await self._close(CLOSE_RATE_LIMITED, f"more than {limit} frames in one second", "rate")
            return False
        return True

    async def _subscribe(self, topics: list[str]) -> None:
        wanted = [topic for topic in dict.fromkeys(topics) if topic not in self.topics]
        try:
            await self._validate(wanted)
        except TopicError as error:
            await self._send_json({"type": "error", "error": str(error), "topics": sorted(self.topics)})
            return
        limit = settings.OASIS_WS_MAX_SUBSCRIPTIONS
        if len(self.topics) + len(wanted) > limit:
            await self._close(
                CLOSE_SUBSCRIPTION_QUOTA,
                f"subscription quota: at most {limit} topics per connection",
                "subscriptions",
            )
            return
        for topic in wanted:
            await self.channel_layer.group_add(topic, self.channel_name)
            self.topics.add(topic)
        await self._send_json({"type": "subscribed", "topics": sorted(self.topics)})

    async def _unsubscribe(self, topics: list[str]) -> None:
        for topic in topics:
            if topic in self.topics:
                await self.channel_layer.group_discard(topic, self.channel_name)
                self.topics.discard(topic)
        await self._send_json({"type": "subscribed", "topics": sorted(self.topics)})

    async def _validate(self, topics: list[str]) -> None:
        symbols: dict[str, str] = {}
        for topic in topics:
            if topic in FIXED_TOPICS:
                continue
            match = CANDLE_TOPIC.match(topic)
            if match is None:
                raise TopicError(
                    f"unknown topic {topic[:80]!r}: expected one of {', '.join(FIXED_TOPICS)} "
                    "or candles.<SYMBOL>.<timeframe>"
                )
            symbol, timeframe = match.groups()
            if timeframe not in TIMEFRAME_VALUES:
                raise TopicError(f"unknown timeframe {timeframe!r} in {topic!r}")
            symbols[symbol] = topic
        if symbols:
            unknown = sorted(set(symbols) - await _symbols_known(list(symbols)))
            if unknown:
                raise TopicError(f"unknown symbol {unknown[0]!r} in {symbols[unknown[0]]!r}")

    async def _send_json(self, body: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(body, separators=(",", ":")))

    # -- group events (HouseStyle: event "candle.update" → handler candle_update) ---------------

    async def _forward(self, topic: str, event: dict[str, Any]) -> None:
        if self.closing:
            return
        WS_EVENTS_SENT.labels(event["type"]).inc()
        await self._send_json({"topic": topic, **event})

    async def candle_update(self, event: dict[str, Any]) -> None:
        await self._forward(f"candles.{event['symbol']}.{event['timeframe']}", event)

    async def signals_new(self, event: dict[str, Any]) -> None:
        await self._forward("signals", event)

    async def order_update(self, event: dict[str, Any]) -> None:
        await self._forward("orders", event)

    async def killswitch_update(self, event: dict[str, Any]) -> None:
        await self._forward("killswitch", event)

    async def alert_update(self, event: dict[str, Any]) -> None:
        await self._forward("alerts", event)
