"""The one way code outside a consumer sends to WebSocket clients: a channel-layer group event,
sent after the surrounding transaction commits (never for data that was rolled back).

With Redis (production, CI), the channel layer carries an event from any process to every
web process. Without it (`make run`: ingestion, trading and the web server are separate
processes, each with an in-memory layer), a process that is not the web server posts its
events to the web server's relay endpoint (`OASIS_BROADCAST_RELAY_URL`, loopback only,
signed with a key derived from SECRET_KEY), which hands them to its own layer. Posting
happens on one background thread per process, in batches, so a slow or absent web server
never slows ingestion or trading; events it cannot deliver are counted and dropped (the
data itself is committed and readable: a broadcast only saves a dashboard a poll).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import queue
import threading
import urllib.error
import urllib.request
from typing import Any

import structlog
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from prometheus_client import Counter

logger = structlog.get_logger(__name__)

RELAY_SIGNATURE_HEADER = "X-Oasis-Relay-Signature"
# A batch is at most this many events; the queue holds at most RELAY_QUEUE_SIZE of them.
RELAY_BATCH = 500
RELAY_QUEUE_SIZE = 20_000

RELAY_EVENTS = Counter(
    "oasis_broadcast_relay_events_total",
    "WebSocket broadcasts posted to the web server's relay, by outcome.",
    ["outcome"],
)
BROADCAST_FAILURES = Counter(
    "oasis_broadcast_failures_total",
    "WebSocket broadcasts the channel layer refused (data is still committed).",
)

GroupEvent = tuple[str, dict[str, Any]]


_serving_web = False


def serve_web_here() -> None:
    """Called by the web server's process (`manage.py serve`): its events go straight to its
    own channel layer, whatever OASIS_BROADCAST_RELAY_URL says (it IS the relay's end)."""
    global _serving_web
    _serving_web = True


def broadcast_after_commit(group: str, event: dict[str, Any]) -> None:
    """Send `event` (its "type" names the consumer handler, e.g. "signals.new") to `group`."""
    transaction.on_commit(lambda: broadcast_now(group, event))


def broadcast_now(group: str, event: dict[str, Any]) -> None:
    """Send at once: for callers that already run after their data committed."""
    broadcast_many_now([(group, event)])


def broadcast_many_now(events: list[GroupEvent]) -> None:
    """Send several events at once (one hop into the event loop for all of them). Not from
    a thread that runs an event loop: use the channel layer there directly."""
    if not events:
        return
    relay_url = getattr(settings, "OASIS_BROADCAST_RELAY_URL", None)
    if relay_url and not _serving_web:
        relay = _relay(relay_url)
        for group, event in events:
            relay.put(group, event)
        return
    layer_broadcast_many(events)


_pending_sends: set[asyncio.Task[None]] = set()


def layer_broadcast_many(events: list[GroupEvent]) -> None:
    """Through this process's channel layer (never the relay). On a thread that runs an event
    loop (ingestion's), the sends are scheduled on it and this returns at once."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        async_to_sync(layer_send_many)(layer, events)
        return
    task = loop.create_task(layer_send_many(layer, events))
    _pending_sends.add(task)  # a reference until it is done (the loop keeps only a weak one)
    task.add_done_callback(_pending_sends.discard)


async def layer_send_many(layer: Any, events: list[GroupEvent]) -> None:
    for group, event in events:
        try:
            await layer.group_send(group, event)
        except Exception:  # best-effort: the data is committed and readable
            BROADCAST_FAILURES.inc()
            logger.exception("broadcast_failed", group=group, type=event.get("type"))


def relay_signature(body: bytes) -> str:
    """HMAC-SHA256 of a relay request body under a key derived from SECRET_KEY."""
    key = hashlib.sha256(b"oasis-broadcast-relay:" + settings.SECRET_KEY.encode()).digest()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def relay_body(events: list[GroupEvent]) -> bytes:
    return json.dumps(
        [{"group": group, "event": event} for group, event in events], separators=(",", ":")
    ).encode()


class RelayError(ValueError):
    """A relay request the web server refuses (bad signature or shape)."""


def relay_events_parse(body: bytes, signature: str) -> list[GroupEvent]:
    """The events of a signed relay request, or RelayError naming what is wrong."""
    if not hmac.compare_digest(relay_signature(body), signature or ""):
        raise RelayError("bad or missing relay signature")
    try:
        items = json.loads(body)
    except ValueError:
        raise RelayError("body is not JSON") from None
    if not isinstance(items, list):
        raise RelayError("body must be a JSON list of {group, event}")
    events: list[GroupEvent] = []
    for index, item in enumerate(items):
        group = item.get("group") if isinstance(item, dict) else None
        event = item.get("event") if isinstance(item, dict) else None
        if (
            not isinstance(group, str)
            or not isinstance(event, dict)
            or not isinstance(event.get("type"), str)
        ):
            raise RelayError(f"item {index} must be {{group: str, event: {{type: str, ...}}}}")
        events.append((group, event))
    return events


class _Relay:
    """One background thread posting queued events in batches to the web server."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.queue: queue.Queue[GroupEvent] = queue.Queue(maxsize=RELAY_QUEUE_SIZE)
        self.thread = threading.Thread(target=self._run, name="broadcast-relay", daemon=True)
        self.thread.start()

    def put(self, group: str, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait((group, event))
        except queue.Full:
            RELAY_EVENTS.labels("dropped_queue_full").inc()

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < RELAY_BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            self._post(batch)

    def _post(self, batch: list[GroupEvent]) -> None:
        body = relay_body(batch)
        request = urllib.request.Request(  # noqa: S310 - a loopback http URL checked in environment.py
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", RELAY_SIGNATURE_HEADER: relay_signature(body)},
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
                response.read()
            RELAY_EVENTS.labels("sent").inc(len(batch))
        except (urllib.error.URLError, OSError, ValueError) as error:
            RELAY_EVENTS.labels("dropped_unreachable").inc(len(batch))
            logger.warning("broadcast_relay_failed", url=self.url, events=len(batch), error=str(error))


_relays: dict[str, _Relay] = {}
_relays_lock = threading.Lock()


def _relay(url: str) -> _Relay:
    with _relays_lock:
        relay = _relays.get(url)
        if relay is None:
            relay = _relays[url] = _Relay(url)
        return relay
