"""What reaches the live WebSocket groups: closed candles, alerts, and, without Redis, events
relayed by other processes through the web server's signed loopback endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from channels.layers import DEFAULT_CHANNEL_LAYER, InMemoryChannelLayer, channel_layers, get_channel_layer
from django.test import Client

from audit.services import audit_record
from marketdata.broadcasts import candles_broadcast
from marketdata.core.timeframes import Timeframe
from marketdata.events import ClosedCandle
from oasis_site.broadcast import (
    RELAY_SIGNATURE_HEADER,
    RelayError,
    broadcast_now,
    relay_body,
    relay_events_parse,
    relay_signature,
)


class GroupListener:
    """A channel in `group`, received on one event loop of its own (the Redis layer binds a
    channel's receive buffer to the loop that first received). With Redis each listener has a
    layer instance of its own: the layer's receive lock is shared by every channel of an
    instance, and a lock left waiting by an earlier listener's loop would be "bound to a
    different event loop" here. The in-memory layer keeps groups per instance, so it is shared."""

    def __init__(self, group: str) -> None:
        self.loop = asyncio.new_event_loop()
        shared = get_channel_layer()
        self.own_layer = not isinstance(shared, InMemoryChannelLayer)
        self.layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER) if self.own_layer else shared
        self.group = group
        self.channel = self.loop.run_until_complete(self.layer.new_channel())
        self.loop.run_until_complete(self.layer.group_add(group, self.channel))

    def next(self, timeout: float = 3.0) -> dict[str, Any] | None:
        try:
            message = self.loop.run_until_complete(
                asyncio.wait_for(self.layer.receive(self.channel), timeout)
            )
        except TimeoutError:
            return None
        return {key: value for key, value in message.items() if not key.startswith("__")}

    def close(self) -> None:
        self.loop.run_until_complete(self.layer.group_discard(self.group, self.channel))
        if self.own_layer:
            self.loop.run_until_complete(self.layer.close_pools())
        self.loop.close()


@pytest.fixture
def listen() -> Iterator[Any]:
    listeners: list[GroupListener] = []

    def make(group: str) -> GroupListener:
        listeners.append(GroupListener(group))
        return listeners[-1]

    yield make
    for listener in listeners:
        listener.close()


def closed_candle() -> ClosedCandle:
    return ClosedCandle(
        symbol_id=1,
        symbol="BTCUSDT",
        timeframe=Timeframe.M1,
        open_time_ms=1_700_000_040_000,
        open=1.5,
        high=2.0,
        low=1.0,
        close=1.75,
        volume=10.0,
        imputed=True,
        committed_at=1_700_000_100.25,
    )


def test_a_closed_candle_reaches_its_series_group_only(listen):
    one_minute, five_minutes = listen("candles.BTCUSDT.1m"), listen("candles.BTCUSDT.5m")
    candles_broadcast([closed_candle()])
    assert one_minute.next() == {
        "type": "candle.update",
        "symbol": "BTCUSDT",
        "timeframe": "1m",
        "t": 1_700_000_040_000,
        "o": 1.5,
        "h": 2.0,
        "l": 1.0,
        "c": 1.75,
        "v": 10.0,
        "imputed": True,
        "committed_at_ms": 1_700_000_100_250,
    }
    assert five_minutes.next(timeout=0.2) is None


def test_from_an_event_loop_the_send_is_scheduled_on_it_and_returns_at_once():
    """Ingestion broadcasts from its event loop: no blocking call into the loop it runs on."""
    layer = get_channel_layer()

    async def scenario() -> dict[str, Any]:
        channel = await layer.new_channel()
        await layer.group_add("candles.BTCUSDT.1m", channel)
        try:
            candles_broadcast([closed_candle()])  # would raise if it blocked on this loop
            message: dict[str, Any] = await asyncio.wait_for(layer.receive(channel), 3)
            return message
        finally:
            await layer.group_discard("candles.BTCUSDT.1m", channel)

    loop = asyncio.new_event_loop()
    try:
        message = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert message["type"] == "candle.update"
    assert message["t"] == 1_700_000_040_000


@pytest.mark.django_db
def test_alert_events_are_broadcast_after_commit_and_others_are_not(
    listen, django_capture_on_commit_callbacks
):
    alerts = listen("alerts")
    with django_capture_on_commit_callbacks(execute=True):
        audit_record(actor="system:test", action="rules.config.update", payload={"name": "x"})
        audit_record(actor="system:drift", action="trading.drift", payload={"over_tolerance": False})
        audit_record(
            actor="system:execution", action="trading.order.rejected", payload={"reason": "min_notional"}
        )
    message = alerts.next()
    assert message is not None
    assert message["type"] == "alert.update"
    alert = message["alert"]
    assert (alert["key"], alert["severity"], alert["state"], alert["count"]) == (
        "trading.order.rejected",
        "warning",
        "firing",
        1,
    )
    assert alert["title"] == "trading.order.rejected: min_notional"
    assert alerts.next(timeout=0.2) is None

    # A recurrence counts on the same alert; a drift over tolerance is critical.
    with django_capture_on_commit_callbacks(execute=True):
        audit_record(
            actor="system:execution", action="trading.order.rejected", payload={"reason": "lot_size"}
        )
        audit_record(actor="system:drift", action="trading.drift", payload={"over_tolerance": True})
    first, second = alerts.next(), alerts.next()
    assert first is not None
    assert second is not None
    assert (first["alert"]["key"], first["alert"]["count"]) == ("trading.order.rejected", 2)
    assert (second["alert"]["key"], second["alert"]["severity"]) == ("trading.drift", "critical")
    # The next drift check within tolerance resolves it.
    with django_capture_on_commit_callbacks(execute=True):
        audit_record(actor="system:drift", action="trading.drift", payload={"over_tolerance": False})
    message = alerts.next()
    assert message is not None
    assert (message["alert"]["key"], message["alert"]["state"]) == ("trading.drift", "resolved")


@pytest.mark.django_db
def test_a_rolled_back_alert_is_never_broadcast(listen, django_capture_on_commit_callbacks):
    from django.db import transaction

    alerts = listen("alerts")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        try:
            with transaction.atomic():
                audit_record(actor="cli:ops", action="trading.killswitch", payload={"to": "halted"})
                raise RuntimeError("rolled back")
        except RuntimeError:
            pass
    assert callbacks == []
    assert alerts.next(timeout=0.2) is None


def test_relay_requests_must_be_signed_and_well_formed():
    events = [("signals", {"type": "signals.new", "signals": []})]
    body = relay_body(events)
    assert relay_events_parse(body, relay_signature(body)) == events
    with pytest.raises(RelayError, match="signature"):
        relay_events_parse(body, "0" * 64)
    with pytest.raises(RelayError, match="signature"):
        relay_events_parse(body.replace(b"signals.new", b"orders.new!"), relay_signature(body))
    bad = b'[{"group": "signals", "event": {"no": "type"}}]'
    with pytest.raises(RelayError, match="item 0"):
        relay_events_parse(bad, relay_signature(bad))


def test_the_relay_endpoint_hands_signed_events_to_the_channel_layer(listen):
    signals = listen("signals")
    body = relay_body([("signals", {"type": "signals.new", "signals": [{"id": 1}]})])
    client = Client()
    response = client.post(
        "/internal/broadcast",
        data=body,
        content_type="application/json",
        headers={RELAY_SIGNATURE_HEADER: relay_signature(body)},
    )
    assert response.status_code == 200
    assert response.json() == {"relayed": 1}
    assert signals.next() == {"type": "signals.new", "signals": [{"id": 1}]}

    response = client.post(
        "/internal/broadcast",
        data=body,
        content_type="application/json",
        headers={RELAY_SIGNATURE_HEADER: "x"},
    )
    assert response.status_code == 400
    assert "signature" in response.json()["error"]
    response = client.post(
        "/internal/broadcast",
        data=body,
        content_type="application/json",
        headers={RELAY_SIGNATURE_HEADER: relay_signature(body)},
        REMOTE_ADDR="10.0.0.8",
    )
    assert response.status_code == 403
    assert signals.next(timeout=0.2) is None


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_another_process_broadcasts_through_the_relay(live_server, settings, listen):
    """As `make run`'s ingestion does: broadcast_now posts to the web server, whose layer
    delivers. (Redis here only so the server thread and the test share one layer.)"""
    orders = listen("orders")
    settings.OASIS_BROADCAST_RELAY_URL = f"{live_server.url}/internal/broadcast"
    event = {"type": "order.update", "order": {"client_order_id": "oas-1", "price": str(Decimal("1.10"))}}
    started = time.monotonic()
    broadcast_now("orders", event)
    assert orders.next(timeout=5) == event
    assert time.monotonic() - started < 5
