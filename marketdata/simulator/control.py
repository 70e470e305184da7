"""The simulator's own endpoints under /_sim/ (no weight, no injected faults):

- `GET /_sim/status`: clock, counters, active faults;
- `POST /_sim/faults` (JSON, see `FaultState.apply`) sets faults, `DELETE /_sim/faults` clears them;
- `GET /_sim/closed?symbol&interval[&startTime][&endTime]`: the truth, every closed candle in the
  range exactly as `/api/v3/klines` returns it, without its 1000-row limit;
- `GET /_sim/orders[?symbol]`: the truth about order placement (see `ControlApi.orders`)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from marketdata.simulator.clock import SimClock
from marketdata.simulator.config import SimConfig
from marketdata.simulator.errors import BinanceError, invalid_symbol
from marketdata.simulator.faults import FaultError, FaultState
from marketdata.simulator.intervals import KLINE_INTERVALS
from marketdata.simulator.market import Market
from marketdata.simulator.orders import Account
from marketdata.simulator.rest import error_response, json_response, kline_query
from marketdata.simulator.streams import Counters, StreamHub

MAX_TRUTH_ROWS = 200_000


class ControlApi:
    def __init__(
        self,
        *,
        market: Market,
        clock: SimClock,
        faults: FaultState,
        account: Account,
        hub: StreamHub,
        config: SimConfig,
        counters: Counters,
    ) -> None:
        self.market = market
        self.clock = clock
        self.faults = faults
        self.account = account
        self.hub = hub
        self.config = config
        self.counters = counters

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/_sim/status", self.status)
        app.router.add_post("/_sim/faults", self.set_faults)
        app.router.add_delete("/_sim/faults", self.clear_faults)
        app.router.add_get("/_sim/closed", self.closed)
        app.router.add_get("/_sim/orders", self.orders)

    def describe(self) -> dict[str, Any]:
        return {
            "serverTime": self.clock.now_ms(),
            "wallTime": int(time.time() * 1000),
            "start": self.clock.start_ms,
            "historyStart": self.market.history_start_ms,
            "speed": self.clock.speed,
            "seed": self.config.seed,
            "symbols": len(self.market.symbols),
            "intervals": list(KLINE_INTERVALS),
            "connections": len(self.hub.connections),
            "streams": len(self.hub.streams),
            "counters": vars(self.counters),
            "faults": self.faults.describe(time.monotonic()),
        }

    async def status(self, request: web.Request) -> web.Response:
        return json_response(self.describe())

    async def set_faults(self, request: web.Request) -> web.Response:
        try:
            payload = orjson.loads(await request.read())
        except orjson.JSONDecodeError as error:
            return json_response({"error": f"body is not JSON: {error}"}, status=400)
        if not isinstance(payload, dict):
            return json_response({"error": "body must be a JSON object"}, status=400)
        try:
            self.faults.apply(
                payload,
                now_ms=self.clock.now_ms(),
                monotonic_now=time.monotonic(),
                symbols={spec.name for spec in self.market.symbols},
            )
        except FaultError as error:
            return json_response({"error": str(error)}, status=400)
        return json_response({"faults": self.faults.describe(time.monotonic())})

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return json_response({"faults": self.faults.describe(time.monotonic())})

    async def closed(self, request: web.Request) -> web.Response:
        try:
            spec, _interval, length, start, end = kline_query(self.market, request.query)
        except BinanceError as error:
            return error_response(error)
        now = self.clock.now_ms()
        count = self.market.count_closed_between(length, now, start_ms=start, end_ms=end)
        if count > MAX_TRUTH_ROWS:
            return json_response({"error": f"{count} candles in range; at most {MAX_TRUTH_ROWS}"}, status=400)
        candles = self.market.closed_between(spec, length, now, start_ms=start, end_ms=end)
        return json_response([candle.rest_row() for candle in candles])

    async def orders(self, request: web.Request) -> web.Response:
        """`{"attempts": n, "faulted": n, "orders": [...]}`: `attempts` counts the
        `POST /api/v3/order` requests that reached the order handler, whatever became of them
        (accepted, refused by the exchange, failing authentication); `faulted` those an injected
        `rest_error` answered instead (never processed); requests refused for request weight are
        in neither. `orders`: every order ever accepted (of `symbol`), by order id, as
        `GET /api/v3/order` shows it now. Both counts are of all symbols."""
        name = request.query.get("symbol")
        if name and self.market.symbol(name) is None:
            return error_response(invalid_symbol())
        return json_response(
            {
                "attempts": self.counters.order_requests,
                "faulted": self.counters.order_requests_faulted,
                "orders": self.account.orders(name or None, self.clock.now_ms()),
            }
        )
