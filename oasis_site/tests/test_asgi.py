"""The ASGI application as daphne runs it: request ids, access log, WebSocket routing."""

import json
import logging
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.testing import WebsocketCommunicator

from oasis_site.asgi import application

# The WebSocket stack's auth middleware may touch the database (session, user), as in production.
pytestmark = pytest.mark.django_db


def access_lines(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    return [
        record.msg
        for record in caplog.records
        if record.name == "oasis.access" and isinstance(record.msg, dict) and record.msg.get("event") == event
    ]


async def http_get(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    """One GET through the ASGI app with the scope daphne builds (host, client address)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), *(headers or [])],
        "client": ("127.0.0.1", 51234),
        "server": ("127.0.0.1", 8000),
    }
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=10)
    body = await communicator.receive_output(timeout=10)
    await communicator.wait(timeout=10)
    return {"status": start["status"], "headers": start["headers"], "body": body["body"]}


@pytest.mark.asyncio
async def test_http_request_gets_an_id_and_one_access_line(caplog):
    caplog.set_level(logging.INFO, logger="oasis.access")
    response = await http_get("/healthz")
    assert response["status"] == 200
    headers = dict(response["headers"])
    request_id = headers[b"x-request-id"].decode()
    assert len(request_id) == 32
    [line] = access_lines(caplog, "http_request")
    assert line["method"] == "GET"
    assert line["path"] == "/healthz"
    assert line["status"] == 200
    assert line["duration_ms"] >= 0
    assert line["client_ip"] == "127.0.0.1"
    assert line["request_id"] == request_id


@pytest.mark.asyncio
async def test_client_request_id_is_kept_when_sane_and_replaced_when_not(caplog):
    caplog.set_level(logging.INFO, logger="oasis.access")
    response = await http_get("/healthz", headers=[(b"x-request-id", b"desk-script-0001")])
    assert dict(response["headers"])[b"x-request-id"] == b"desk-script-0001"
    response = await http_get("/healthz", headers=[(b"x-request-id", b"a\nforged log")])
    assert dict(response["headers"])[b"x-request-id"] != b"a\nforged log"
    assert access_lines(caplog, "http_request")[0]["request_id"] == "desk-script-0001"


@pytest.mark.asyncio
async def test_unknown_path_is_logged_with_its_status(caplog):
    caplog.set_level(logging.INFO, logger="oasis.access")
    response = await http_get("/no-such-page")
    assert response["status"] == 404
    [line] = access_lines(caplog, "http_request")
    assert line["status"] == 404


@pytest.mark.asyncio
async def test_websocket_ping_and_access_line(caplog):
    caplog.set_level(logging.INFO, logger="oasis.access")
    communicator = WebsocketCommunicator(
        application, "/ws/ping/", headers=[(b"origin", b"http://127.0.0.1:8000")]
    )
    connected, _ = await communicator.connect()
    assert connected
    try:
        await communicator.send_json_to({"type": "ping", "id": 7})
        reply = await communicator.receive_json_from()
        assert reply["type"] == "pong"
        assert reply["id"] == 7
        assert reply["server_time_ms"] > 1_600_000_000_000
    finally:
        await communicator.disconnect(code=1000)
    [line] = access_lines(caplog, "websocket_connection")
    assert line["path"] == "/ws/ping/"
    assert line["accepted"] is True
    assert line["close_code"] == 1000
    assert line["closed_by"] == "client"
    assert len(line["request_id"]) == 32


@pytest.mark.asyncio
async def test_websocket_from_foreign_origin_is_refused(caplog):
    caplog.set_level(logging.INFO, logger="oasis.access")
    communicator = WebsocketCommunicator(
        application, "/ws/ping/", headers=[(b"origin", b"https://evil.example.com")]
    )
    connected, _ = await communicator.connect()
    await communicator.disconnect()
    assert connected is False
    [line] = access_lines(caplog, "websocket_connection")
    assert line["accepted"] is False
    assert line["closed_by"] == "server"


@pytest.mark.asyncio
async def test_websocket_closes_on_unexpected_message():
    communicator = WebsocketCommunicator(application, "/ws/ping/", headers=[(b"origin", b"http://localhost")])
    connected, _ = await communicator.connect()
    assert connected
    try:
        await communicator.send_to(text_data="not json")
        error = json.loads(await communicator.receive_from())
        assert error == {"type": "error", "error": 'expected {"type": "ping"}'}
        closed = await communicator.receive_output()
        assert closed == {"type": "websocket.close", "code": 1003}
    finally:
        await communicator.disconnect()
