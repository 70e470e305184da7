"""`manage.py serve` stops gracefully: on SIGTERM /readyz turns "draining" at once, live
WebSockets stay served for the shutdown delay and are then closed with 4503 and a reason, the
process exits 0, and the clients reconnect to the instance that replaces it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from oasis_site.tests.stack_harness import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

DELAY_S = 1.5
GRACE_S = 5.0


def status_of(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


class Stack:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DATABASE_URL", "REDIS_URL", "OASIS_ENV", "DJANGO_SETTINGS_MODULE"}
        }
        self.env.update(
            OASIS_ENV="dev",
            OASIS_PORT=str(self.port),
            OASIS_LOG_FORMAT="json",
            DATABASE_URL=f"sqlite:///{tmp_path}/drain.sqlite3",
            OASIS_SHUTDOWN_DELAY_S=str(DELAY_S),
            OASIS_SHUTDOWN_GRACE_S=str(GRACE_S),
        )
        self.tmp_path = tmp_path
        result = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def start(self, name: str) -> tuple[subprocess.Popen[str], Path]:
        log_path = self.tmp_path / f"{name}.log"
        with log_path.open("w") as log:
            server = subprocess.Popen(
                [sys.executable, "manage.py", "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                if status_of(f"{self.base}/readyz")[0] == 200:
                    return server, log_path
            except (urllib.error.URLError, ConnectionError):
                pass
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)


async def subscribed_socket(session: aiohttp.ClientSession, stack: Stack) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(f"ws://127.0.0.1:{stack.port}/ws/live/", origin=stack.base)
    await ws.send_json({"type": "subscribe", "topics": ["killswitch", "alerts"]})
    reply = await ws.receive_json(timeout=10)
    assert reply["type"] == "subscribed", reply
    return ws


async def scenario(stack: Stack, server: subprocess.Popen[str]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        sockets = [await subscribed_socket(session, stack) for _ in range(3)]
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        seen["readyz"] = await asyncio.to_thread(status_of, f"{stack.base}/readyz")
        # Within the delay the sockets are still served.
        await sockets[0].send_json({"type": "ping", "id": "during-drain"})
        seen["pong"] = await sockets[0].receive_json(timeout=5)
        closes = []
        for ws in sockets:
            frame = await ws.receive(timeout=DELAY_S + GRACE_S + 5)
            notice = json.loads(frame.data) if frame.type == aiohttp.WSMsgType.TEXT else None
            if notice is not None:
                frame = await ws.receive(timeout=5)
            closes.append((notice, frame.type, ws.close_code, frame.extra))
        seen["closed_after_s"] = time.monotonic() - started
        seen["closes"] = closes
    return seen


async def reconnect(stack: Stack) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        ws = await subscribed_socket(session, stack)
        await ws.send_json({"type": "ping", "id": "after"})
        pong: dict[str, Any] = await ws.receive_json(timeout=5)
        await ws.close()
        return pong


def test_sigterm_drains_websockets_then_the_successor_takes_the_clients(tmp_path):
    stack = Stack(tmp_path)
    server, log_path = stack.start("first")
    try:
        seen = asyncio.run(scenario(stack, server))
        server.wait(timeout=DELAY_S + GRACE_S + 15)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    log = log_path.read_text()
    assert server.returncode == 0, log[-3000:]

    status, body = seen["readyz"]
    assert (status, body["status"]) == (503, "draining"), body
    assert seen["pong"]["type"] == "pong", seen["pong"]
    assert seen["closed_after_s"] >= DELAY_S, "sockets closed before the load balancer had time to notice"
    for notice, frame_type, code, reason in seen["closes"]:
        assert notice == {"type": "closing", "code": 4503, "reason": "server restarting: reconnect"}, notice
        assert frame_type == aiohttp.WSMsgType.CLOSE, frame_type
        assert code == 4503, (code, reason)  # the reason travels in the notice (daphne drops it)
    drained = [json.loads(line) for line in log.splitlines() if '"shutdown_drained"' in line]
    assert drained, log[-3000:]
    assert (drained[0]["websockets_closed"], drained[0]["close_failures"]) == (3, 0), drained[0]
    assert re.search(r"^stopped$", log, re.M), log[-3000:]

    # The successor (a rolling update's new instance) takes the reconnecting clients.
    successor, successor_log = stack.start("successor")
    try:
        assert asyncio.run(reconnect(stack))["type"] == "pong"
    finally:
        successor.send_signal(signal.SIGTERM)
        successor.wait(timeout=DELAY_S + GRACE_S + 15)
    assert successor.returncode == 0, successor_log.read_text()[-3000:]


def test_a_second_signal_stops_at_once(tmp_path):
    stack = Stack(tmp_path)
    server, log_path = stack.start("impatient")
    try:

        async def hold_a_socket() -> float:
            async with aiohttp.ClientSession() as session:
                ws = await subscribed_socket(session, stack)
                started = time.monotonic()
                server.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                server.send_signal(signal.SIGTERM)
                await ws.receive(timeout=10)
                return time.monotonic() - started

        took = asyncio.run(hold_a_socket())
        server.wait(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert took < DELAY_S, f"the second signal did not cut the drain short ({took:.2f} s)"
    assert "second stop signal" in log_path.read_text()
