"""The live WebSocket feed (`oasis_site.consumers.LiveConsumer`) through the whole ASGI app:
origin check, topics, forwarded events, quotas that close with a code and a reason, and the
auth flag. Every communicator is disconnected."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from prometheus_client import REGISTRY
from waffle.testutils import override_flag

from marketdata.tests.factories import SymbolFactory
from oasis_site.asgi import application
from oasis_site.flags import API_AUTH_REQUIRED

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

ORIGIN = (b"origin", b"http://127.0.0.1:8000")


def communicator(origin: tuple[bytes, bytes] | None = ORIGIN) -> WebsocketCommunicator:
    headers = [(b"host", b"127.0.0.1:8000")] + ([origin] if origin else [])
    return WebsocketCommunicator(application, "/ws/live/", headers=headers)


async def connected() -> WebsocketCommunicator:
    socket = communicator()
    ok, _ = await socket.connect(timeout=5)
    assert ok
    return socket


async def send(socket: WebsocketCommunicator, body: Any) -> dict[str, Any]:
    await socket.send_to(text_data=json.dumps(body))
    reply: dict[str, Any] = json.loads(await socket.receive_from(timeout=5))
    return reply


async def expect_close(socket: WebsocketCommunicator, code: int, reason_part: str) -> None:
    closing = json.loads(await socket.receive_from(timeout=5))
    assert closing["type"] == "closing"
    assert closing["code"] == code
    assert reason_part in closing["reason"]
    message = await socket.receive_output(timeout=5)
    assert message["type"] == "websocket.close"
    assert message["code"] == code
    assert reason_part in message["reason"]


async def closed_count(reason: str) -> float:
    # The registry's collectors read the database at scrape time: off the event loop.
    value = await sync_to_async(REGISTRY.get_sample_value)("oasis_ws_closed_total", {"reason": reason})
    return value or 0.0


@pytest.fixture
def btc(transactional_db):
    return SymbolFactory(symbol="BTCUSDT", base="BTC", quote="USDT")


async def test_another_sites_origin_is_refused_at_the_handshake():
    for origin in [(b"origin", b"http://evil.example"), None]:
        socket = communicator(origin)
        ok, _ = await socket.connect(timeout=5)
        assert not ok
        await socket.disconnect()


async def test_subscribed_topics_receive_their_events_and_only_theirs(btc):
    socket = await connected()
    try:
        reply = await send(socket, {"type": "subscribe", "topics": ["candles.BTCUSDT.1m", "killswitch"]})
        assert reply == {"type": "subscribed", "topics": ["candles.BTCUSDT.1m", "killswitch"]}
        layer = get_channel_layer()
        await layer.group_send(
            "candles.BTCUSDT.5m", {"type": "candle.update", "symbol": "BTCUSDT", "timeframe": "5m"}
        )
        candle = {"type": "candle.update", "symbol": "BTCUSDT", "timeframe": "1m", "t": 60_000, "c": 27450.12}
        await layer.group_send("candles.BTCUSDT.1m", candle)
        assert json.loads(await socket.receive_from(timeout=5)) == {"topic": "candles.BTCUSDT.1m", **candle}
        await layer.group_send("killswitch", {"type": "killswitch.update", "state": "halted"})
        assert json.loads(await socket.receive_from(timeout=5)) == {
            "topic": "killswitch",
            "type": "killswitch.update",
            "state": "halted",
        }
        assert await socket.receive_nothing(timeout=0.2)

        reply = await send(socket, {"type": "unsubscribe", "topics": ["killswitch"]})
        assert reply["topics"] == ["candles.BTCUSDT.1m"]
        await layer.group_send("killswitch", {"type": "killswitch.update", "state": "active"})
        assert await socket.receive_nothing(timeout=0.2)

        pong = await send(socket, {"type": "ping", "id": 7})
        assert pong["type"] == "pong"
        assert pong["id"] == 7
    finally:
        await socket.disconnect()


async def test_unknown_topics_are_refused_with_a_reason_and_the_socket_stays_open(btc):
    socket = await connected()
    try:
        for topic, expected in [
            ("candles.DOGEUSDT.1m", "unknown symbol 'DOGEUSDT'"),
            ("candles.BTCUSDT.2m", "unknown timeframe '2m'"),
            ("everything", "unknown topic 'everything'"),
        ]:
            reply = await send(socket, {"type": "subscribe", "topics": ["signals", topic]})
            assert reply["type"] == "error"
            assert expected in reply["error"]
            assert reply["topics"] == []  # nothing of a refused request is subscribed
        reply = await send(socket, {"type": "subscribe", "topics": ["signals"]})
        assert reply == {"type": "subscribed", "topics": ["signals"]}
    finally:
        await socket.disconnect()


@pytest.mark.parametrize(
    ("frame", "code", "reason", "label"),
    [
        ("not json", 1007, "malformed frame", "malformed"),
        (json.dumps([1, 2]), 1007, "malformed frame", "malformed"),
        (json.dumps({"type": "shout"}), 1007, "malformed frame", "malformed"),
        (
            json.dumps({"type": "subscribe", "topics": "signals"}),
            1007,
            "'topics' must be a list",
            "malformed",
        ),
        ("x" * 5000, 1009, "5000 bytes is over the 4096-byte limit", "too_big"),
    ],
)
async def test_malformed_or_oversized_frames_close_with_a_reason_and_are_counted(frame, code, reason, label):
    before = await closed_count(label)
    socket = await connected()
    try:
        await socket.send_to(text_data=frame)
        await expect_close(socket, code, reason)
    finally:
        await socket.disconnect()
    assert await closed_count(label) == before + 1
    # The server is unaffected: a new connection works.
    again = await connected()
    try:
        assert (await send(again, {"type": "ping"}))["type"] == "pong"
    finally:
        await again.disconnect()


async def test_binary_frames_are_refused():
    socket = await connected()
    try:
        await socket.send_to(bytes_data=b"\x00\x01")
        await expect_close(socket, 1003, "binary frames are not accepted")
    finally:
        await socket.disconnect()


async def test_more_frames_per_second_than_the_quota_close_the_socket(settings):
    settings.OASIS_WS_MAX_MESSAGES_PER_S = 5
    before = await closed_count("rate")
    socket = await connected()
    try:
        for _ in range(5):
            assert (await send(socket, {"type": "ping"}))["type"] == "pong"
        await socket.send_to(text_data=json.dumps({"type": "ping"}))
        await expect_close(socket, 4008, "more than 5 frames in one second")
    finally:
        await socket.disconnect()
    assert await closed_count("rate") == before + 1


async def test_more_subscriptions_than_the_quota_close_the_socket(settings, btc):
    settings.OASIS_WS_MAX_SUBSCRIPTIONS = 3
    socket = await connected()
    try:
        reply = await send(socket, {"type": "subscribe", "topics": ["signals", "orders", "alerts"]})
        assert reply["type"] == "subscribed"
        # Subscribing again to what it has costs nothing.
        assert (await send(socket, {"type": "subscribe", "topics": ["signals"]}))["type"] == "subscribed"
        await socket.send_to(text_data=json.dumps({"type": "subscribe", "topics": ["candles.BTCUSDT.1m"]}))
        await expect_close(socket, 4009, "at most 3 topics per connection")
    finally:
        await socket.disconnect()


def session_cookie() -> bytes:
    from django.contrib.auth import get_user_model
    from django.test import Client

    get_user_model().objects.create_user("desk", password="pw-for-tests-only")
    client = Client()
    assert client.login(username="desk", password="pw-for-tests-only")
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def test_with_the_auth_flag_on_an_anonymous_client_is_closed_and_a_user_is_served():
    cookie = await sync_to_async(session_cookie)()
    flag = override_flag(API_AUTH_REQUIRED, active=True)
    await sync_to_async(flag.enable)()
    try:
        socket = await connected()
        try:
            await expect_close(socket, 4401, "login required")
        finally:
            await socket.disconnect()
        socket = WebsocketCommunicator(
            application, "/ws/live/", headers=[(b"host", b"127.0.0.1:8000"), ORIGIN, (b"cookie", cookie)]
        )
        ok, _ = await socket.connect(timeout=5)
        assert ok
        try:
            assert (await send(socket, {"type": "ping"}))["type"] == "pong"
        finally:
            await socket.disconnect()
    finally:
        await sync_to_async(flag.disable)()
    # Off (the initial environment): open.
    socket = await connected()
    try:
        assert (await send(socket, {"type": "ping"}))["type"] == "pong"
    finally:
        await socket.disconnect()
