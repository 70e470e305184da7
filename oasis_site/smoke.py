"""Post-deploy smoke check: the whole flow in dry-run, against a running stack, over its public
interfaces only (HTTP, the REST API, the live WebSocket), link by link:

web → market data arriving (a newer 1m candle stored) → resampling (a newer 3m candle) →
a signal computed → a dry-run order decided → an audit event → a dashboard WebSocket update.

Each link waits up to its share of the timeout for fresh evidence (something that happened
after the check started, never an old row) and the first that does not come is named.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp


class SmokeFailure(RuntimeError):
    def __init__(self, link: str, detail: str) -> None:
        super().__init__(f"{link}: {detail}")
        self.link = link


@dataclass
class SmokeCheck:
    base_url: str
    symbol: str = "BTCUSDT"
    timeout_s: float = 300.0
    token: str | None = None
    poll_s: float = 0.5
    passed: list[str] = field(default_factory=list)

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        url = f"{self.base_url.rstrip('/')}{path}" + (f"?{urlencode(params)}" if params else "")
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 - the operator's stack URL
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())

    def _wait(self, link: str, what: str, probe: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            try:
                if probe():
                    self.passed.append(link)
                    return
            except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
                last_error = f" (last error: {error})"
            time.sleep(self.poll_s)
        raise SmokeFailure(link, f"no {what} within {self.timeout_s:.0f} s{last_error}")

    def _newest_candle(self, timeframe: str) -> int | None:
        candles = self._get(f"/symbols/{self.symbol}/chart.json", {"tf": timeframe})["candles"]
        return int(candles[-1]["t"]) if candles else None

    def run(self) -> list[str]:
        started = datetime.now(UTC)
        try:
            health = self._get("/readyz")
        except urllib.error.HTTPError as error:
            try:
                failing = json.loads(error.read()).get("checks", {})
                detail = "; ".join(
                    f"{name}: {check.get('detail')}" for name, check in failing.items() if not check.get("ok")
                )
            except ValueError:
                detail = f"HTTP {error.code}"
            raise SmokeFailure("web", f"not ready: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise SmokeFailure("web", f"{self.base_url}/readyz did not answer ready: {error}") from None
        if health.get("status") != "ready":
            raise SmokeFailure("web", f"not ready: failing {health.get('failing')}")
        self.passed.append("web")

        first_1m, first_3m = self._newest_candle("1m"), self._newest_candle("3m")
        self._wait(
            "market data",
            f"new closed 1m candle of {self.symbol} stored",
            lambda: (self._newest_candle("1m") or 0) > (first_1m or 0),
        )
        self._wait(
            "resampling",
            f"new 3m candle of {self.symbol} resampled",
            lambda: (self._newest_candle("3m") or 0) > (first_3m or 0),
        )

        def newer(path: str, key: str, params: dict[str, Any]) -> bool:
            rows = self._get(path, {**params, "limit": 1})["results"]
            return bool(rows) and datetime.fromisoformat(rows[0][key].replace("Z", "+00:00")) >= started

        self._wait("signals", "signal computed", lambda: newer("/api/v1/signals/", "computed_at", {}))
        # A fresh signal decided by the execution loop: an order (accepted or refused by the risk
        # checks) or a skip with its reason (an entry while in, say): the order path ran.
        self._wait(
            "orders",
            "signal decided by the dry-run execution loop",
            lambda: newer("/api/v1/decisions/", "decided_at", {"mode": "dry_run"}),
        )
        self._wait("audit", "audit event recorded", lambda: newer("/api/v1/audit-events/", "created_at", {}))
        asyncio.run(self._websocket())
        self.passed.append("websocket")
        return self.passed

    async def _websocket(self) -> None:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        url = f"{scheme}://{parts.netloc}/ws/live/"
        topic = f"candles.{self.symbol}.1m"
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(
                    url,
                    headers={"Origin": f"{parts.scheme}://{parts.netloc}"},
                    timeout=aiohttp.ClientWSTimeout(ws_close=5),
                ) as ws,
            ):
                await ws.send_json({"type": "subscribe", "topics": [topic]})
                deadline = time.monotonic() + self.timeout_s
                while time.monotonic() < deadline:
                    message = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
                    if message.type != aiohttp.WSMsgType.TEXT:
                        raise SmokeFailure(
                            "websocket", f"the live feed closed: {message.type.name} {message.data}"
                        )
                    event = json.loads(message.data)
                    if event.get("type") == "error":
                        raise SmokeFailure("websocket", f"subscription refused: {event.get('error')}")
                    if event.get("topic") == topic and event.get("type") == "candle.update":
                        return
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise SmokeFailure("websocket", f"{url}: {type(error).__name__}: {error}") from None
        raise SmokeFailure("websocket", f"no candle.update on {topic} within {self.timeout_s:.0f} s")
