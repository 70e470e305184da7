"""Binance Spot REST: market data (`ping`, `time`, `exchangeInfo`, `klines`) and the signed
order endpoints, behind one middleware that adds latency, serves injected errors, counts
request weight (`X-MBX-USED-WEIGHT-1M`, 429 + Retry-After past the limit) and renders
`BinanceError` as Binance does. Order placement also keeps the unfilled-order count
(`X-MBX-ORDER-COUNT-10S`/`-1D`, 429 / -1015 past it) and may hold back its answer
(`order_timeout` fault)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from marketdata.simulator.candles import Candle
from marketdata.simulator.clock import SimClock
from marketdata.simulator.config import SimConfig
from marketdata.simulator.errors import (
    BinanceError,
    illegal_characters,
    integer_param,
    invalid_interval,
    invalid_limit,
    invalid_symbol,
    mandatory,
)
from marketdata.simulator.faults import FaultState, MissingKlines
from marketdata.simulator.intervals import KLINE_INTERVALS
from marketdata.simulator.market import Market
from marketdata.simulator.orders import Account
from marketdata.simulator.streams import Counters
from marketdata.simulator.symbols import SymbolSpec
from marketdata.simulator.weights import OrderCountLimiter, WeightLimiter, request_weight

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SYMBOLS_RANGE = '^\\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\\]$'
MAX_RECV_WINDOW_MS = 60_000
ORDER_PATH = "/api/v3/order"


def json_response(body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    return web.Response(body=payload, status=status, content_type="application/json", headers=headers)


def error_response(error: BinanceError, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response({"code": error.code, "msg": error.msg}, status=error.status, headers=headers)


def kline_query(
    market: Market, params: Mapping[str, str]
) -> tuple[SymbolSpec, str, int, int | None, int | None]:
    """symbol, interval name and length, startTime, endTime of a klines-shaped query."""
    name = params.get("symbol")
    if not name:
        raise mandatory("symbol")
    interval = params.get("interval")
    if not interval:
        raise mandatory("interval")
    spec = market.symbol(name)
    if spec is None:
        raise invalid_symbol()
    length = KLINE_INTERVALS.get(interval)
    if length is None:
        raise invalid_interval()
    start, end = integer_param(params, "startTime"), integer_param(params, "endTime")
    if start is not None and end is not None and start > end:
        raise BinanceError(-1023, "Start time is greater than end time.")
    return spec, interval, length, start, end


class RestApi:
    def __init__(
        self,
        *,
        market: Market,
        clock: SimClock,
        faults: FaultState,
        account: Account,
        config: SimConfig,
        counters: Counters,
        order_counts: OrderCountLimiter,
    ) -> None:
        """`order_counts` is the account's, shared with the `Account` (it decrements on fills)."""
        self.market = market
        self.clock = clock
        self.faults = faults
        self.account = account
        self.config = config
        self.counters = counters
        self.order_counts = order_counts
        self.weights = WeightLimiter(config.weight_limit, config.weight_window_s)
        self._symbol_info = {spec.name: orjson.dumps(spec.exchange_info()) for spec in market.symbols}
        self._all_symbols = b"[" + b",".join(self._symbol_info.values()) + b"]"
        self._rate_limits = orjson.dumps(
            [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": config.weight_limit,
                },
                *(window.rate_limit() for window in order_counts.windows),
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
            ]
        )

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v3/ping", self.ping)
        app.router.add_get("/api/v3/time", self.server_time)
        app.router.add_get("/api/v3/exchangeInfo", self.exchange_info)
        app.router.add_get("/api/v3/klines", self.klines)
        app.router.add_post(ORDER_PATH, self.place_order)
        app.router.add_get(ORDER_PATH, self.signed(self.account.query))
        app.router.add_delete(ORDER_PATH, self.signed(self.account.cancel))
        app.router.add_get("/api/v3/openOrders", self.signed(self.account.open_orders))
        app.router.add_get("/api/v3/account", self.signed(self.account.account))
        app.router.add_get("/api/v3/myTrades", self.signed(self.account.my_trades))

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        self.counters.rest_requests += 1
        faults = self.faults
        if faults.rest_latency_ms:
            await asyncio.sleep(faults.rest_latency_ms / 1000)
        ip = request.remote or "unknown"
        if faults.rest_error is not None:
            status = faults.rest_error.take(time.monotonic())
            if status is not None:
                self.counters.rest_faults += 1
                if request.method == "POST" and request.path == ORDER_PATH:
                    self.counters.order_requests_faulted += 1
                return self._fault_response(status, faults.rest_error.retry_after_s, self.weights.used(ip))
        used, retry_after = self.weights.charge(
            ip, request_weight(request.method, request.path, request.query)
        )
        headers = {"X-MBX-USED-WEIGHT-1M": str(used), "X-MBX-USED-WEIGHT": str(used)}
        if retry_after is not None:
            self.counters.rest_rate_limited += 1
            return error_response(self._too_much_weight(), {**headers, "Retry-After": str(retry_after)})
        try:
            response = await handler(request)
        except BinanceError as error:
            return error_response(error, headers)
        except web.HTTPException as error:  # unknown path or method: still counted, still shown
            error.headers.update(headers)
            raise
        response.headers.update(headers)
        return response

    def _too_much_weight(self) -> BinanceError:
        msg = (
            f"Too much request weight used; current limit is {self.weights.limit} request weight per "
            "1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API."
        )
        return BinanceError(-1003, msg, status=429)

    def _fault_response(self, status: int, retry_after: int, used: int) -> web.Response:
        headers = {"X-MBX-USED-WEIGHT-1M": str(used), "X-MBX-USED-WEIGHT": str(used)}
        if status in (429, 418):
            headers["Retry-After"] = str(retry_after)
            if status == 429:
                return error_response(self._too_much_weight(), headers)
            banned_until = int(time.time() * 1000) + retry_after * 1000
            msg = (
                f"Way too much request weight used; IP banned until {banned_until}. "
                "Please use WebSocket Streams for live updates to avoid bans."
            )
            return error_response(BinanceError(-1003, msg, status=418), headers)
        if status == 500:
            return error_response(
                BinanceError(-1000, "An unknown error occurred while processing the request.", status=500),
                headers,
            )
        if status == 503:
            return error_response(
                BinanceError(
                    -1001, "Internal error; unable to process your request. Please try again.", status=503
                ),
                headers,
            )
        reason = "Bad Gateway" if status == 502 else "Gateway Time-out"
        return web.Response(
            status=status,
            text=f"<html><body><h1>{status} {reason}</h1></body></html>",
            content_type="text/html",
            headers=headers,
        )

    # Market data --------------------------------------------------------------------------

    async def ping(self, request: web.Request) -> web.Response:
        return json_response(b"{}")

    async def server_time(self, request: web.Request) -> web.Response:
        return json_response({"serverTime": self.clock.now_ms()})

    async def exchange_info(self, request: web.Request) -> web.Response:
        single, many = request.query.get("symbol"), request.query.get("symbols")
        if single and many:
            raise BinanceError(-1128, "Combination of optional parameters invalid.")
        if single:
            names = [single]
        elif many:
            try:
                names = orjson.loads(many)
            except orjson.JSONDecodeError:
                raise illegal_characters("symbols", _SYMBOLS_RANGE) from None
            if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                raise illegal_characters("symbols", _SYMBOLS_RANGE)
        else:
            names = []
        if names:
            if any(name not in self._symbol_info for name in names):
                raise invalid_symbol()
            symbols = b"[" + b",".join(self._symbol_info[name] for name in dict.fromkeys(names)) + b"]"
        else:
            symbols = self._all_symbols
        body = b"".join(
            [
                b'{"timezone":"UTC","serverTime":',
                str(self.clock.now_ms()).encode(),
                b',"rateLimits":',
                self._rate_limits,
                b',"exchangeFilters":[],"symbols":',
                symbols,
                b"}",
            ]
        )
        return json_response(body)

    async def klines(self, request: web.Request) -> web.Response:
        spec, interval, length, start, end = kline_query(self.market, request.query)
        limit = integer_param(request.query, "limit")
        limit = 500 if limit is None else limit
        if not 1 <= limit <= 1000:
            raise invalid_limit()
        now = self.clock.now_ms()
        missing = self.faults.missing_windows(spec.name, interval)
        if not missing:
            candles = self.market.klines(spec, length, now, start_ms=start, end_ms=end, limit=limit)
        else:
            candles = _klines_without(self.market, missing, spec, length, now, start, end, limit)
        return json_response([candle.rest_row() for candle in candles])

    # Signed endpoints ---------------------------------------------------------------------

    def signed(self, operation: Callable[[Mapping[str, str], int], Any]) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            params = await self._authenticate(request)
            return json_response(operation(params, self.clock.now_ms()))

        return handler

    async def place_order(self, request: web.Request) -> web.Response:
        """`POST /api/v3/order`. Every answer carries the order-count headers. An accepted order
        may have its answer held back by the `order_timeout` fault: it is placed (and filled)
        all the same, only the client does not hear of it in time."""
        self.counters.order_requests += 1
        try:
            params = await self._authenticate(request)
            refusal = self.order_counts.refusal()
            if refusal is not None:
                window, retry_after = refusal
                self.counters.orders_count_limited += 1
                return error_response(
                    BinanceError(-1015, window.too_many_message(), status=429),
                    {**self.order_counts.headers(), "Retry-After": str(retry_after)},
                )
            result = self.account.place(params, self.clock.now_ms())
        except BinanceError as error:
            return error_response(error, self.order_counts.headers())
        self.order_counts.add()
        headers = self.order_counts.headers()
        timeout = self.faults.order_timeout
        hold_s = None if timeout is None else timeout.take()
        if hold_s is not None:
            self.counters.order_answers_withheld += 1
            await asyncio.sleep(hold_s)
        return json_response(result, headers=headers)

    async def _authenticate(self, request: web.Request) -> dict[str, str]:
        """Binance's SIGNED security: X-MBX-APIKEY, then HMAC-SHA256 (hex) with the secret over
        the query string concatenated with the body, minus the signature parameter. The
        timestamp is checked against the wall clock (what the client's clock shows), not
        against simulated time."""
        key = request.headers.get("X-MBX-APIKEY")
        if not key:
            raise BinanceError(-2014, "API-key format invalid.", status=401)
        if not hmac.compare_digest(key, self.config.api_key):
            raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", status=401)
        query = request.rel_url.raw_query_string
        body = await request.text() if request.can_read_body else ""
        params = dict(parse_qsl(body, keep_blank_values=True))
        params.update(parse_qsl(query, keep_blank_values=True))  # the query string wins, as Binance
        signature = params.pop("signature", "")
        if not signature:
            raise mandatory("signature")
        total = _without_signature(query) + _without_signature(body)
        expected = hmac.new(self.config.api_secret.encode(), total.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature.lower(), expected):
            raise BinanceError(-1022, "Signature for this request is not valid.")
        timestamp = integer_param(params, "timestamp")
        if timestamp is None:
            raise mandatory("timestamp")
        recv_window = integer_param(params, "recvWindow")
        recv_window = 5000 if recv_window is None else recv_window
        if recv_window > MAX_RECV_WINDOW_MS:
            raise BinanceError(-1131, "recvWindow must be less than 60000")
        now = int(time.time() * 1000)
        if timestamp > now + 1000 or now - timestamp > recv_window:
            raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")
        return params


def _klines_without(
    market: Market,
    missing: list[MissingKlines],
    spec: SymbolSpec,
    length: int,
    now: int,
    start: int | None,
    end: int | None,
    limit: int,
) -> list[Candle]:
    """`Market.klines` with the candles of the `missing_klines` windows left out, still `limit`
    of them when there are: like Binance, the rows that exist from startTime (or, without it,
    the latest ones up to endTime)."""

    def kept(candles: list[Candle]) -> list[Candle]:
        return [c for c in candles if not any(w.start <= c.open_time <= w.end for w in missing)]

    served: list[Candle] = []
    if start is not None:
        cursor = start
        while len(served) < limit:
            raw = market.klines(spec, length, now, start_ms=cursor, end_ms=end, limit=limit)
            served.extend(kept(raw))
            if len(raw) < limit:
                break
            cursor = raw[-1].open_time + length
        return served[:limit]
    upper = end
    while len(served) < limit:
        raw = market.klines(spec, length, now, start_ms=None, end_ms=upper, limit=limit)
        served[:0] = kept(raw)
        if len(raw) < limit or raw[0].open_time <= market.history_start_ms:
            break
        upper = raw[0].open_time - 1
    return served[-limit:]


def _without_signature(encoded: str) -> str:
    return "&".join(part for part in encoded.split("&") if part and not part.startswith("signature="))
