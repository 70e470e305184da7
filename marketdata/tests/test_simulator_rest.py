"""The simulator's REST API over real sockets: market data, errors, request weight, injected
faults, the truth endpoint and the signed order endpoints."""

import asyncio
import hashlib
import hmac
import time
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
import pytest_asyncio

from marketdata.simulator import SimConfig, SimExchange
from marketdata.simulator.intervals import MINUTE_MS
from marketdata.tests.shared_data import REAL_CANDLES_CSV

START = int(datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp() * 1000)
REPLAY_CSV = REAL_CANDLES_CSV
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SIM0001USDT")


class Sim(SimExchange):
    session: aiohttp.ClientSession


async def started(**overrides) -> Sim:
    fields = {"port": 0, "symbols": SYMBOLS, "start_ms": START, "history_minutes": 1440, "speed": 60.0}
    exchange = Sim(SimConfig(**{**fields, **overrides}))
    await exchange.start()
    return exchange


@pytest_asyncio.fixture
async def sim():
    exchange = await started()
    async with aiohttp.ClientSession(base_url=exchange.urls.base) as session:
        exchange.session = session
        yield exchange
    await exchange.stop()


async def get(sim, path, **params):
    async with sim.session.get(path, params=params) as response:
        return response.status, response.headers, orjson.loads(await response.read())


async def set_faults(sim, payload):
    async with sim.session.post("/_sim/faults", data=orjson.dumps(payload)) as response:
        body = orjson.loads(await response.read())
        assert response.status == 200, body
        return body


# Market data ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_ping_time_and_weight_header(sim):
    status, headers, body = await get(sim, "/api/v3/ping")
    assert (status, body) == (200, {})
    assert headers["X-MBX-USED-WEIGHT-1M"] == "1"
    status, headers, body = await get(sim, "/api/v3/time")
    assert status == 200
    assert headers["X-MBX-USED-WEIGHT-1M"] == "2"
    assert START <= body["serverTime"] <= sim.clock.now_ms()
    async with sim.session.get("/api/v3/nothingHere") as response:
        assert response.status == 404
        assert response.headers["X-MBX-USED-WEIGHT-1M"] == "3"


@pytest.mark.asyncio
async def test_exchange_info_lists_symbols_with_filters(sim):
    status, headers, body = await get(sim, "/api/v3/exchangeInfo")
    assert status == 200
    assert headers["X-MBX-USED-WEIGHT-1M"] == "20"
    assert body["timezone"] == "UTC"
    assert body["rateLimits"][0] == {
        "rateLimitType": "REQUEST_WEIGHT",
        "interval": "MINUTE",
        "intervalNum": 1,
        "limit": 6000,
    }
    assert [s["symbol"] for s in body["symbols"]] == list(SYMBOLS)
    btc = body["symbols"][0]
    assert (btc["status"], btc["baseAsset"], btc["quoteAsset"]) == ("TRADING", "BTC", "USDT")
    filters = {f["filterType"]: f for f in btc["filters"]}
    assert filters["LOT_SIZE"]["stepSize"] == "0.00001000"
    assert filters["NOTIONAL"]["minNotional"] == "5.00000000"

    _, _, one = await get(sim, "/api/v3/exchangeInfo", symbol="ETHUSDT")
    assert [s["symbol"] for s in one["symbols"]] == ["ETHUSDT"]
    _, _, two = await get(sim, "/api/v3/exchangeInfo", symbols='["SIM0001USDT","BTCUSDT"]')
    assert [s["symbol"] for s in two["symbols"]] == ["SIM0001USDT", "BTCUSDT"]
    status, _, body = await get(sim, "/api/v3/exchangeInfo", symbol="NOPEUSDT")
    assert (status, body) == (400, {"code": -1121, "msg": "Invalid symbol."})
    status, _, body = await get(sim, "/api/v3/exchangeInfo", symbol="BTCUSDT", symbols='["BTCUSDT"]')
    assert (status, body["code"]) == (400, -1128)


@pytest.mark.asyncio
async def test_klines_rows_are_binance_shaped_and_end_with_the_forming_candle(sim):
    status, headers, rows = await get(sim, "/api/v3/klines", symbol="BTCUSDT", interval="1m")
    now = sim.clock.now_ms()
    assert status == 200
    assert headers["X-MBX-USED-WEIGHT-1M"] == "2"
    assert len(rows) == 500
    for row in rows:
        assert len(row) == 12
        open_time, o, h, l, c, v, close_time, q, n, tb, tq, ignore = row  # noqa: E741
        assert open_time % MINUTE_MS == 0
        assert close_time == open_time + MINUTE_MS - 1
        for text in (o, h, l, c, v, q, tb, tq):
            assert len(text.split(".")[1]) == 8
        assert Decimal(o) % Decimal("0.01") == 0
        assert Decimal(h) >= max(Decimal(o), Decimal(c))
        assert Decimal(l) <= min(Decimal(o), Decimal(c))
        assert isinstance(n, int)
        assert ignore == "0"
    assert [row[0] for row in rows] == list(range(rows[0][0], rows[-1][0] + 1, MINUTE_MS))
    assert rows[-1][0] <= now < rows[-1][6] + 1 + MINUTE_MS  # last row: the forming candle (or just closed)


@pytest.mark.asyncio
async def test_klines_range_and_limit(sim):
    start = START - 600 * MINUTE_MS
    _, _, rows = await get(
        sim,
        "/api/v3/klines",
        symbol="ETHUSDT",
        interval="5m",
        startTime=start + 1,
        endTime=start + 3_600_000,
        limit=4,
    )
    assert [row[0] for row in rows] == [start + i * 5 * MINUTE_MS for i in range(1, 5)]
    _, _, rows = await get(sim, "/api/v3/klines", symbol="ETHUSDT", interval="4h", limit=1000)
    assert rows[0][0] == sim.market.history_start_ms
    assert all(row[0] % (240 * MINUTE_MS) == 0 for row in rows)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("params", "code", "msg"),
    [
        ({"symbol": "BTCUSDT", "interval": "10m"}, -1120, "Invalid interval."),
        ({"symbol": "BTCUSDT", "interval": "1d"}, -1120, "Invalid interval."),
        ({"symbol": "NOPEUSDT", "interval": "1m"}, -1121, "Invalid symbol."),
        (
            {"interval": "1m"},
            -1102,
            "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
        ),
        (
            {"symbol": "BTCUSDT"},
            -1102,
            "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.",
        ),
        (
            {"symbol": "BTCUSDT", "interval": "1m", "limit": "1001"},
            -1130,
            "Data sent for parameter 'limit' is not valid.",
        ),
        (
            {"symbol": "BTCUSDT", "interval": "1m", "limit": "0"},
            -1130,
            "Data sent for parameter 'limit' is not valid.",
        ),
        (
            {"symbol": "BTCUSDT", "interval": "1m", "startTime": "2", "endTime": "1"},
            -1023,
            "Start time is greater than end time.",
        ),
        (
            {"symbol": "BTCUSDT", "interval": "1m", "startTime": "yesterday"},
            -1100,
            "Illegal characters found in parameter 'startTime'; legal range is '^[0-9]{1,20}$'.",
        ),
    ],
)
async def test_klines_errors_are_binance_errors(sim, params, code, msg):
    status, headers, body = await get(sim, "/api/v3/klines", **params)
    assert (status, body) == (400, {"code": code, "msg": msg})
    assert "X-MBX-USED-WEIGHT-1M" in headers


@pytest.mark.asyncio
async def test_truth_endpoint_equals_closed_klines(sim):
    first = START - 300 * MINUTE_MS
    for interval, length in (("1m", MINUTE_MS), ("3m", 3 * MINUTE_MS), ("15m", 15 * MINUTE_MS)):
        _, _, klines = await get(
            sim, "/api/v3/klines", symbol="SIM0001USDT", interval=interval, startTime=first, limit=1000
        )
        status, headers, truth = await get(
            sim, "/_sim/closed", symbol="SIM0001USDT", interval=interval, startTime=first
        )
        assert status == 200
        assert "X-MBX-USED-WEIGHT-1M" not in headers
        now = sim.clock.now_ms()
        assert truth == klines[: len(truth)]
        assert truth[-1][0] + length <= now
        assert len(truth) >= len(klines) - 2
    _, _, everything = await get(sim, "/_sim/closed", symbol="BTCUSDT", interval="1m")
    assert len(everything) > 1000
    assert everything[0][0] == sim.market.history_start_ms
    status, _, body = await get(sim, "/_sim/closed", symbol="BTCUSDT", interval="10m")
    assert (status, body["code"]) == (400, -1120)


@pytest.mark.asyncio
async def test_replayed_symbol_serves_the_file_from_the_start_of_the_history():
    exchange = await started(replay_path=REPLAY_CSV, symbols=("ETHUSDT",))
    try:
        async with aiohttp.ClientSession(base_url=exchange.urls.base) as session:
            params = {
                "symbol": "BTCUSDT",
                "interval": "3m",
                "startTime": str(exchange.market.history_start_ms),
            }
            async with session.get("/api/v3/klines", params={**params, "limit": "1"}) as response:
                rows = orjson.loads(await response.read())
    finally:
        await exchange.stop()
    # The file's first three minutes: 23140.48 open, 23156.46 high, 23128.52 low, 23153.44 close.
    assert rows[0][:5] == [
        exchange.market.history_start_ms,
        "23140.48000000",
        "23156.46000000",
        "23128.52000000",
        "23153.44000000",
    ]
    assert [spec.name for spec in exchange.market.symbols] == ["BTCUSDT", "ETHUSDT"]


# Request weight and injected faults -------------------------------------------------------


@pytest.mark.asyncio
async def test_weight_limit_answers_429_with_retry_after():
    exchange = await started(weight_limit=10)
    try:
        async with aiohttp.ClientSession(base_url=exchange.urls.base) as session:
            used = []
            for _ in range(5):
                async with session.get(
                    "/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1m", "limit": "1"}
                ) as r:
                    assert r.status == 200
                    used.append(int(r.headers["X-MBX-USED-WEIGHT-1M"]))
            assert used == [2, 4, 6, 8, 10]
            async with session.get("/api/v3/ping") as r:
                assert r.status == 429
                assert 1 <= int(r.headers["Retry-After"]) <= 60
                assert r.headers["X-MBX-USED-WEIGHT-1M"] == "11"
                body = orjson.loads(await r.read())
                assert body["code"] == -1003
                assert "current limit is 10 request weight per 1 MINUTE" in body["msg"]
            async with session.get("/_sim/status") as r:
                assert r.status == 200
                assert orjson.loads(await r.read())["counters"]["rest_rate_limited"] == 1
    finally:
        await exchange.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [429, 418])
async def test_injected_limit_errors_for_the_next_requests(sim, status):
    await set_faults(sim, {"rest_error": {"status": status, "count": 2, "retry_after": 7}})
    for _ in range(2):
        async with sim.session.get("/api/v3/ping") as r:
            assert r.status == status
            assert r.headers["Retry-After"] == "7"
            assert orjson.loads(await r.read())["code"] == -1003
    async with sim.session.get("/api/v3/ping") as r:
        assert r.status == 200
    # The control endpoint is never faulted.
    _, _, status_body = await get(sim, "/_sim/status")
    assert status_body["counters"]["rest_faults"] == 2


@pytest.mark.asyncio
async def test_injected_5xx_burst_and_timed_errors(sim):
    await set_faults(sim, {"rest_error": {"status": "5xx", "count": 4}})
    statuses = []
    for _ in range(5):
        async with sim.session.get("/api/v3/time") as r:
            statuses.append(r.status)
            await r.read()
    assert statuses == [500, 502, 503, 504, 200]

    await set_faults(sim, {"rest_error": {"status": 503, "seconds": 0.4}})
    async with sim.session.get("/api/v3/time") as r:
        assert r.status == 503
        assert orjson.loads(await r.read())["code"] == -1001
    deadline = time.monotonic() + 5
    while True:
        async with sim.session.get("/api/v3/time") as r:
            if r.status == 200:
                break
        assert time.monotonic() < deadline


@pytest.mark.asyncio
async def test_injected_latency_and_clearing(sim):
    await set_faults(sim, {"rest_latency_ms": 600})
    began = time.monotonic()
    assert (await get(sim, "/api/v3/ping"))[0] == 200
    assert time.monotonic() - began >= 0.6
    async with sim.session.delete("/_sim/faults") as r:
        assert orjson.loads(await r.read())["faults"]["rest_latency_ms"] == 0
    began = time.monotonic()
    await get(sim, "/api/v3/ping")
    assert time.monotonic() - began < 0.6


@pytest.mark.asyncio
async def test_bad_fault_settings_are_refused(sim):
    async with sim.session.post("/_sim/faults", data=b'{"rest_error": {"status": 404, "count": 1}}') as r:
        assert r.status == 400
        assert "404" in orjson.loads(await r.read())["error"]
    async with sim.session.post("/_sim/faults", data=b"not json") as r:
        assert r.status == 400


# Signed order endpoints -------------------------------------------------------------------


def signed(params, secret="sim-secret", **extra):
    query = urlencode({**params, "timestamp": int(time.time() * 1000), **extra})
    signature = hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
    return f"{query}&signature={signature}"


async def private(sim, method, path, params, *, key="sim-key", secret="sim-secret", in_body=False):
    query = signed(params, secret)
    headers = {"X-MBX-APIKEY": key}
    if in_body:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = sim.session.request(method, path, data=query, headers=headers)
    else:
        request = sim.session.request(method, f"{path}?{query}", headers=headers)
    async with request as response:
        return response.status, orjson.loads(await response.read())


async def balances(sim):
    status, account = await private(sim, "GET", "/api/v3/account", {})
    assert status == 200
    return {b["asset"]: (Decimal(b["free"]), Decimal(b["locked"])) for b in account["balances"]}


@pytest.mark.asyncio
async def test_signed_requests_need_the_key_and_a_valid_signature(sim):
    assert await private(sim, "GET", "/api/v3/account", {}, key="wrong") == (
        401,
        {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."},
    )
    assert await private(sim, "GET", "/api/v3/account", {}, secret="wrong") == (
        400,
        {"code": -1022, "msg": "Signature for this request is not valid."},
    )
    async with sim.session.get("/api/v3/account", params={"timestamp": "1"}) as r:
        assert (r.status, orjson.loads(await r.read())["code"]) == (401, -2014)
    stale = urlencode({"timestamp": int(time.time() * 1000) - 60_000})
    stale += "&signature=" + hmac.new(b"sim-secret", stale.encode(), hashlib.sha256).hexdigest()
    async with sim.session.get(f"/api/v3/account?{stale}", headers={"X-MBX-APIKEY": "sim-key"}) as r:
        assert orjson.loads(await r.read())["code"] == -1021


@pytest.mark.asyncio
async def test_market_order_fills_at_the_current_close(sim):
    status, order = await private(
        sim,
        "POST",
        "/api/v3/order",
        {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01", "newClientOrderId": "m-1"},
        in_body=True,
    )
    assert status == 200, order
    assert (order["status"], order["clientOrderId"], order["executedQty"]) == ("FILLED", "m-1", "0.01000000")
    price = Decimal(order["fills"][0]["price"])
    minute = order["transactTime"] - order["transactTime"] % MINUTE_MS
    _, _, candle = await get(
        sim, "/api/v3/klines", symbol="BTCUSDT", interval="1m", startTime=minute, limit=1
    )
    assert Decimal(candle[0][3]) <= price <= Decimal(candle[0][2])
    assert Decimal(order["cummulativeQuoteQty"]) == price * Decimal("0.01")
    held = await balances(sim)
    assert held["BTC"] == (Decimal("0.01"), 0)
    assert held["USDT"] == (Decimal(100000) - price * Decimal("0.01"), 0)
    status, trades = await private(sim, "GET", "/api/v3/myTrades", {"symbol": "BTCUSDT"})
    assert [(t["orderId"], t["qty"], t["isBuyer"]) for t in trades] == [
        (order["orderId"], "0.01000000", True)
    ]
    status, fetched = await private(
        sim, "GET", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "m-1"}
    )
    assert (status, fetched["orderId"], fetched["status"]) == (200, order["orderId"], "FILLED")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("params", "code", "msg"),
    [
        (
            {"type": "LIMIT", "timeInForce": "GTC", "quantity": "0.000015", "price": "50000"},
            -1013,
            "Filter failure: LOT_SIZE",
        ),
        (
            {"type": "LIMIT", "timeInForce": "GTC", "quantity": "0.001", "price": "50000.005"},
            -1013,
            "Filter failure: PRICE_FILTER",
        ),
        (
            {"type": "LIMIT", "timeInForce": "GTC", "quantity": "0.00001", "price": "100"},
            -1013,
            "Filter failure: NOTIONAL",
        ),
        (
            {"type": "LIMIT", "quantity": "0.001", "price": "50000"},
            -1102,
            "Mandatory parameter 'timeInForce' was not sent, was empty/null, or malformed.",
        ),
        (
            {"type": "MARKET", "quantity": "0.001", "price": "50000"},
            -1106,
            "Parameter 'price' sent when not required.",
        ),
        ({"type": "STOP_LOSS", "quantity": "0.001"}, -1116, "Invalid orderType."),
        (
            {"type": "MARKET", "quantity": "1e3"},
            -1100,
            "Illegal characters found in parameter 'quantity'; "
            "legal range is '^([0-9]{1,20})(\\.[0-9]{1,20})?$'.",
        ),
        (
            {"type": "MARKET", "quantity": "10"},
            -2010,
            "Account has insufficient balance for requested action.",
        ),
    ],
)
async def test_order_validation_answers_binance_errors(sim, params, code, msg):
    status, body = await private(sim, "POST", "/api/v3/order", {"symbol": "BTCUSDT", "side": "BUY", **params})
    assert (status, body) == (400, {"code": code, "msg": msg})


@pytest.mark.asyncio
async def test_limit_order_rests_then_cancels_and_duplicates_are_refused(sim):
    _, _, rows = await get(sim, "/api/v3/klines", symbol="ETHUSDT", interval="1m", limit=1)
    far_below = (Decimal(rows[-1][4]) / 2).quantize(Decimal("0.01"))
    order_params = {
        "symbol": "ETHUSDT",
        "side": "BUY",
        "type": "LIMIT",
        "timeInForce": "GTC",
        "quantity": "1",
        "price": str(far_below),
        "newClientOrderId": "rest-1",
    }
    status, order = await private(sim, "POST", "/api/v3/order", order_params, in_body=True)
    assert (status, order["status"], order["fills"]) == (200, "NEW", [])
    assert await private(sim, "POST", "/api/v3/order", order_params) == (
        400,
        {"code": -2010, "msg": "Duplicate order sent."},
    )
    assert (await balances(sim))["USDT"] == (Decimal(100000) - far_below, far_below)
    _, open_orders = await private(sim, "GET", "/api/v3/openOrders", {"symbol": "ETHUSDT"})
    assert [o["clientOrderId"] for o in open_orders] == ["rest-1"]
    status, cancelled = await private(
        sim, "DELETE", "/api/v3/order", {"symbol": "ETHUSDT", "orderId": order["orderId"]}
    )
    assert (status, cancelled["status"], cancelled["origClientOrderId"]) == (200, "CANCELED", "rest-1")
    assert (await balances(sim))["USDT"] == (Decimal(100000), 0)
    assert await private(
        sim, "DELETE", "/api/v3/order", {"symbol": "ETHUSDT", "orderId": order["orderId"]}
    ) == (
        400,
        {"code": -2011, "msg": "Unknown order sent."},
    )
    assert await private(sim, "GET", "/api/v3/order", {"symbol": "ETHUSDT", "orderId": 999}) == (
        400,
        {"code": -2013, "msg": "Order does not exist."},
    )
    # Once the first is no longer open, its client order id may be used again, as on Binance.
    status, again = await private(sim, "POST", "/api/v3/order", order_params)
    assert (status, again["status"]) == (200, "NEW")


@pytest.mark.asyncio
async def test_limit_order_fills_when_a_later_candle_reaches_its_price(sim):
    spec = sim.market.symbol("BTCUSDT")
    _, _, rows = await get(sim, "/api/v3/klines", symbol="BTCUSDT", interval="1m", limit=1)
    price = Decimal(rows[-1][4]) - Decimal("0.01")
    status, order = await private(
        sim,
        "POST",
        "/api/v3/order",
        {
            "symbol": "BTCUSDT",
            "side": "BUY",
            "type": "LIMIT",
            "timeInForce": "GTC",
            "quantity": "0.001",
            "price": str(price),
        },
    )
    assert status == 200, order
    if order["status"] == "FILLED":  # the price moved down between the two requests: a taker fill
        return
    placed_minute = order["transactTime"] - order["transactTime"] % MINUTE_MS
    deadline = time.monotonic() + 20
    while True:
        _, fetched = await private(
            sim, "GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": order["orderId"]}
        )
        if fetched["status"] == "FILLED":
            break
        assert time.monotonic() < deadline, "no candle reached the price in 20 simulated minutes"
        await asyncio.sleep(0.2)
    # The fill is the first closed candle after the order's own whose low reached the price.
    _, _, truth = await get(
        sim, "/_sim/closed", symbol="BTCUSDT", interval="1m", startTime=placed_minute + MINUTE_MS
    )
    first_hit = next(row for row in truth if Decimal(row[3]) <= price)
    assert fetched["updateTime"] == first_hit[6]
    assert fetched["executedQty"] == "0.00100000"
    _, trades = await private(
        sim, "GET", "/api/v3/myTrades", {"symbol": "BTCUSDT", "orderId": order["orderId"]}
    )
    assert (trades[0]["price"], trades[0]["isMaker"]) == (f"{price:.8f}", True)
    assert spec is not None
