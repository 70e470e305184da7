"""What the order-execution code must survive, reproduced over real sockets: an order whose
answer is lost (`order_timeout` fault), the placement truth (`GET /_sim/orders`), Binance's
unfilled-order count (`X-MBX-ORDER-COUNT-*`, 429 / -1015) and commission on fills."""

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import ROUND_UP, Decimal
from typing import Any

import pytest

from marketdata.simulator import SimConfig, SimExchangeThread
from marketdata.simulator.weights import OrderCountLimiter
from marketdata.tests.ingest_harness import sim_faults, sim_get, sim_signed

START = int(datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp() * 1000)
EIGHT = Decimal("0.00000001")


@contextmanager
def running(**overrides: object) -> Iterator[SimExchangeThread]:
    fields: dict[str, object] = {
        "port": 0,
        "symbols": ("BTCUSDT", "ETHUSDT"),
        "start_ms": START,
        "history_minutes": 60,
    }
    with SimExchangeThread(SimConfig(**{**fields, **overrides})) as sim:  # type: ignore[arg-type]
        yield sim


@pytest.fixture
def sim() -> Iterator[SimExchangeThread]:
    with running() as started:
        yield started


def market(symbol: str, side: str, quantity: str, **extra: str) -> dict[str, str]:
    return {"symbol": symbol, "side": side, "type": "MARKET", "quantity": quantity, **extra}


def resting_buy(sim: SimExchangeThread, symbol: str = "ETHUSDT", **extra: str) -> dict[str, str]:
    """A LIMIT BUY at half the last close: it rests (it never fills during a test)."""
    last = sim_get(sim, f"/api/v3/klines?symbol={symbol}&interval=1m&limit=1")[-1][4]
    price = (Decimal(last) / 2).quantize(Decimal("0.01"))
    return {
        "symbol": symbol,
        "side": "BUY",
        "type": "LIMIT",
        "timeInForce": "GTC",
        "quantity": "1",
        "price": str(price),
        **extra,
    }


def post_faults(sim: SimExchangeThread, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{sim.urls.control}/faults", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def balances(sim: SimExchangeThread) -> dict[str, tuple[Decimal, Decimal]]:
    status, _, account = sim_signed(sim, "GET", "/api/v3/account", {})
    assert status == 200, account
    return {b["asset"]: (Decimal(b["free"]), Decimal(b["locked"])) for b in account["balances"]}


# Lost answers ------------------------------------------------------------------------------


def test_order_timeout_places_the_order_but_the_client_never_hears_of_it(sim):
    sim_faults(sim, {"order_timeout": {"count": 1, "hold_s": 3}})
    assert sim_get(sim, "/_sim/status")["faults"]["order_timeout"] == {
        "remaining": 1,
        "hold_s": 3.0,
        "served": 0,
    }
    # A refused order is answered at once and leaves the fault armed.
    status, _, body = sim_signed(
        sim, "POST", "/api/v3/order", market("BTCUSDT", "BUY", "0.000001"), timeout=0.5
    )
    assert (status, body) == (400, {"code": -1013, "msg": "Filter failure: LOT_SIZE"})
    assert sim_get(sim, "/_sim/status")["faults"]["order_timeout"]["remaining"] == 1

    sent = time.monotonic()
    with pytest.raises(TimeoutError):
        sim_signed(
            sim,
            "POST",
            "/api/v3/order",
            market("BTCUSDT", "BUY", "0.01", newClientOrderId="lost-1"),
            timeout=0.5,
        )
    assert time.monotonic() - sent < 2.5  # the client gave up; the exchange still holds the answer

    status, _, order = sim_signed(
        sim, "GET", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "lost-1"}
    )
    assert status == 200, order
    assert (order["status"], order["executedQty"], order["side"]) == ("FILLED", "0.01000000", "BUY")
    truth = sim_get(sim, "/_sim/orders")
    assert (truth["attempts"], truth["faulted"]) == (2, 0)
    assert [(o["clientOrderId"], o["status"]) for o in truth["orders"]] == [("lost-1", "FILLED")]
    assert truth["orders"][0] == order
    assert balances(sim)["BTC"] == (Decimal("0.01"), Decimal(0))
    status_body = sim_get(sim, "/_sim/status")
    assert status_body["counters"]["order_answers_withheld"] == 1
    assert status_body["faults"]["order_timeout"] == {"remaining": 0, "hold_s": 3.0, "served": 1}

    # Spent: the next accepted order is answered at once.
    status, _, body = sim_signed(
        sim, "POST", "/api/v3/order", market("BTCUSDT", "SELL", "0.01", newClientOrderId="heard-1"), timeout=2
    )
    assert (status, body["status"], body["clientOrderId"]) == (200, "FILLED", "heard-1")


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"count": 0, "hold_s": 1}, "order_timeout count must be an integer >= 1, got 0"),
        ({"count": True, "hold_s": 1}, "order_timeout count must be an integer >= 1, got True"),
        ({"count": 1.5, "hold_s": 1}, "order_timeout count must be an integer >= 1, got 1.5"),
        ({"count": 1, "hold_s": 0}, "order_timeout hold_s must be a number > 0, got 0"),
        ({"count": 1, "hold_s": "2"}, "order_timeout hold_s must be a number > 0, got '2'"),
        ({"count": 1}, "order_timeout needs exactly count and hold_s, got ['count']"),
        ({"count": 1, "hold_s": 1, "x": 1}, "order_timeout needs exactly count and hold_s"),
        ("soon", "order_timeout must be an object or null, got 'soon'"),
    ],
)
def test_bad_order_timeout_settings_are_refused_naming_the_value(sim, setting, named):
    status, body = post_faults(sim, json.dumps({"order_timeout": setting}).encode())
    assert status == 400
    assert named in body["error"]
    assert sim_get(sim, "/_sim/status")["faults"]["order_timeout"] is None


def test_order_timeout_is_removed_by_null_and_by_the_global_clear(sim):
    sim_faults(sim, {"order_timeout": {"count": 2, "hold_s": 0.25}})
    assert sim_get(sim, "/_sim/status")["faults"]["order_timeout"]["remaining"] == 2
    sim_faults(sim, {"order_timeout": None})
    assert sim_get(sim, "/_sim/status")["faults"]["order_timeout"] is None
    sim_faults(sim, {"order_timeout": {"count": 2, "hold_s": 5}})
    sim_faults(sim, None)
    assert sim_get(sim, "/_sim/status")["faults"]["order_timeout"] is None
    status, _, body = sim_signed(sim, "POST", "/api/v3/order", market("BTCUSDT", "BUY", "0.01"), timeout=2)
    assert (status, body["status"]) == (200, "FILLED")


# The placement truth -----------------------------------------------------------------------


def test_sim_orders_counts_attempts_and_faulted_requests_and_lists_every_accepted_order(sim):
    assert sim_get(sim, "/_sim/orders") == {"attempts": 0, "faulted": 0, "orders": []}
    sim_faults(sim, {"rest_error": {"status": 503, "count": 2}})
    for _ in range(2):
        status, _, body = sim_signed(sim, "POST", "/api/v3/order", market("BTCUSDT", "BUY", "0.01"))
        assert (status, body["code"]) == (503, -1001)
    status, _, body = sim_signed(sim, "POST", "/api/v3/order", market("BTCUSDT", "BUY", "0.01"), key="wrong")
    assert (status, body["code"]) == (401, -2015)
    status, _, body = sim_signed(sim, "POST", "/api/v3/order", market("BTCUSDT", "BUY", "10"))
    assert (status, body["code"]) == (400, -2010)  # insufficient balance: refused, not placed
    status, _, first = sim_signed(sim, "POST", "/api/v3/order", market("BTCUSDT", "BUY", "0.01"))
    assert status == 200, first
    status, _, second = sim_signed(sim, "POST", "/api/v3/order", resting_buy(sim, newClientOrderId="rest"))
    assert status == 200, second
    status, _, third = sim_signed(sim, "POST", "/api/v3/order", market("BTCUSDT", "SELL", "0.005"))
    assert status == 200, third
    # Other endpoints are not placements.
    assert sim_signed(sim, "GET", "/api/v3/openOrders", {})[0] == 200

    truth = sim_get(sim, "/_sim/orders")
    assert (truth["attempts"], truth["faulted"]) == (5, 2)
    assert [(o["orderId"], o["symbol"], o["status"]) for o in truth["orders"]] == [
        (first["orderId"], "BTCUSDT", "FILLED"),
        (second["orderId"], "ETHUSDT", "NEW"),
        (third["orderId"], "BTCUSDT", "FILLED"),
    ]
    assert first["orderId"] < second["orderId"] < third["orderId"]
    eth = sim_get(sim, "/_sim/orders?symbol=ETHUSDT")
    assert (eth["attempts"], [o["clientOrderId"] for o in eth["orders"]]) == (5, ["rest"])
    # The control API is neither weighed nor faulted, and counts nothing itself.
    sim_faults(sim, {"rest_error": {"status": 500, "count": 5}})
    assert sim_get(sim, "/_sim/orders")["attempts"] == 5
    with pytest.raises(urllib.error.HTTPError) as refused:
        sim_get(sim, "/_sim/orders?symbol=NOPEUSDT")
    assert refused.value.code == 400


# Unfilled-order count ----------------------------------------------------------------------


def test_order_count_headers_and_the_10s_limit():
    with running(orders_per_10s=3, orders_per_day=1000) as sim:
        counts = []
        for n in range(2):
            status, headers, body = sim_signed(
                sim, "POST", "/api/v3/order", resting_buy(sim, newClientOrderId=f"r{n}")
            )
            assert (status, body["status"]) == (200, "NEW")
            counts.append((headers["X-MBX-ORDER-COUNT-10S"], headers["X-MBX-ORDER-COUNT-1D"]))
        assert counts == [("1", "1"), ("2", "2")]
        # Refused placements answer with the count and add nothing to it.
        status, headers, body = sim_signed(sim, "POST", "/api/v3/order", market("ETHUSDT", "BUY", "0.000001"))
        assert (status, body["code"], headers["X-MBX-ORDER-COUNT-10S"]) == (400, -1013, "2")
        status, headers, body = sim_signed(sim, "POST", "/api/v3/order", resting_buy(sim))
        assert (status, headers["X-MBX-ORDER-COUNT-10S"], headers["X-MBX-ORDER-COUNT-1D"]) == (200, "3", "3")

        status, headers, body = sim_signed(sim, "POST", "/api/v3/order", resting_buy(sim))
        assert (status, body) == (
            429,
            {"code": -1015, "msg": "Too many new orders; current limit is 3 orders per 10 SECOND."},
        )
        assert 1 <= int(headers["Retry-After"]) <= 10
        assert (headers["X-MBX-ORDER-COUNT-10S"], headers["X-MBX-ORDER-COUNT-1D"]) == ("3", "3")
        assert "X-MBX-USED-WEIGHT-1M" in headers
        truth = sim_get(sim, "/_sim/orders")
        assert (truth["attempts"], len(truth["orders"])) == (5, 3)
        assert sim_get(sim, "/_sim/status")["counters"]["orders_count_limited"] == 1


def test_filled_orders_leave_the_count_unless_decrement_is_off():
    with running(orders_per_10s=2) as sim:
        seen = []
        for _ in range(4):
            status, headers, body = sim_signed(
                sim, "POST", "/api/v3/order", market("BTCUSDT", "BUY", "0.001")
            )
            assert (status, body["status"]) == (200, "FILLED")
            seen.append(headers["X-MBX-ORDER-COUNT-10S"])
        # Each one counts in its own answer, and is taken off before the next is checked.
        assert seen == ["1", "1", "1", "1"]
    with running(orders_per_10s=2, orders_fill_decrement=False) as sim:
        answers = [
            sim_signed(sim, "POST", "/api/v3/order", market("BTCUSDT", "BUY", "0.001"))[::2] for _ in range(3)
        ]
        assert [status for status, _ in answers] == [200, 200, 429]
        assert answers[2][1]["code"] == -1015


def test_exchange_info_lists_the_configured_order_limits(sim):
    limits = [r for r in sim_get(sim, "/api/v3/exchangeInfo")["rateLimits"] if r["rateLimitType"] == "ORDERS"]
    assert limits == [
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 50},
        {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 160000},
    ]
    with running(orders_per_10s=7, orders_per_day=99) as other:
        limits = [
            r for r in sim_get(other, "/api/v3/exchangeInfo")["rateLimits"] if r["interval"] != "MINUTE"
        ]
        assert [(r["interval"], r["limit"]) for r in limits] == [("SECOND", 7), ("DAY", 99)]


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_order_count_windows_open_with_the_first_order_and_expire():
    clock = FakeMonotonic()
    limiter = OrderCountLimiter(2, 3, monotonic=clock)
    assert limiter.refusal() is None
    limiter.add()
    clock.now += 6
    limiter.add()
    window, retry_after = limiter.refusal() or (None, None)
    assert (window and window.name, retry_after) == ("10S", 4)  # the window opened 6 s ago
    clock.now += 4  # 10 s after the first order: the 10 s window resets, the day's does not
    assert limiter.refusal() is None
    assert limiter.headers() == {"X-MBX-ORDER-COUNT-10S": "0", "X-MBX-ORDER-COUNT-1D": "2"}
    limiter.add()
    window, retry_after = limiter.refusal() or (None, None)
    assert (window and window.name, retry_after) == ("1D", 86_400 - 10)
    assert window is not None
    assert window.too_many_message() == "Too many new orders; current limit is 3 orders per 1 DAY."
    limiter.filled()  # taken off when the next placement is checked, never below 0
    assert limiter.headers()["X-MBX-ORDER-COUNT-1D"] == "3"
    assert limiter.refusal() is None
    assert limiter.headers() == {"X-MBX-ORDER-COUNT-10S": "0", "X-MBX-ORDER-COUNT-1D": "2"}
    clock.now += 86_400
    assert limiter.headers() == {"X-MBX-ORDER-COUNT-10S": "0", "X-MBX-ORDER-COUNT-1D": "0"}


# Commission --------------------------------------------------------------------------------


def test_commission_is_charged_in_the_quote_asset_on_every_fill():
    with running(commission_bps=10) as sim:
        status, _, account = sim_signed(sim, "GET", "/api/v3/account", {})
        assert (account["makerCommission"], account["takerCommission"], account["buyerCommission"]) == (
            10,
            10,
            0,
        )
        assert account["commissionRates"] == {
            "maker": "0.00100000",
            "taker": "0.00100000",
            "buyer": "0.00000000",
            "seller": "0.00000000",
        }
        status, _, bought = sim_signed(sim, "POST", "/api/v3/order", market("BTCUSDT", "BUY", "0.00123"))
        assert status == 200, bought
        (fill,) = bought["fills"]
        cost = Decimal(fill["price"]) * Decimal("0.00123")
        assert Decimal(bought["cummulativeQuoteQty"]) == cost  # commission is not part of it
        buy_fee = Decimal(fill["commission"])
        # 0.1 % of the cost, rounded up to 8 decimals: never less than the rate, less than 1e-8 over.
        assert buy_fee == (cost / 1000).quantize(EIGHT, rounding=ROUND_UP)
        assert 0 <= buy_fee - cost / 1000 < EIGHT
        assert fill["commissionAsset"] == "USDT"
        held = balances(sim)
        assert held["USDT"] == (Decimal(100000) - cost - buy_fee, Decimal(0))
        assert held["BTC"] == (Decimal("0.00123"), Decimal(0))

        status, _, sold = sim_signed(sim, "POST", "/api/v3/order", market("BTCUSDT", "SELL", "0.00123"))
        assert status == 200, sold
        proceeds = Decimal(sold["cummulativeQuoteQty"])
        sell_fee = Decimal(sold["fills"][0]["commission"])
        assert sell_fee == (proceeds / 1000).quantize(EIGHT, rounding=ROUND_UP)
        assert balances(sim)["USDT"] == (Decimal(100000) - cost - buy_fee + proceeds - sell_fee, Decimal(0))
        status, _, trades = sim_signed(sim, "GET", "/api/v3/myTrades", {"symbol": "BTCUSDT"})
        assert [(t["commission"], t["commissionAsset"]) for t in trades] == [
            (fill["commission"], "USDT"),
            (sold["fills"][0]["commission"], "USDT"),
        ]

        # A resting BUY locks its commission with its cost, and a cancel gives both back.
        before = balances(sim)["USDT"]
        params = resting_buy(sim)
        status, _, resting = sim_signed(sim, "POST", "/api/v3/order", params)
        assert (status, resting["status"]) == (200, "NEW")
        reserved = Decimal(params["price"]) + (Decimal(params["price"]) / 1000).quantize(
            EIGHT, rounding=ROUND_UP
        )
        assert balances(sim)["USDT"] == (before[0] - reserved, reserved)
        status, _, _ = sim_signed(
            sim, "DELETE", "/api/v3/order", {"symbol": "ETHUSDT", "orderId": resting["orderId"]}
        )
        assert status == 200
        assert balances(sim)["USDT"] == before


def test_no_commission_by_default(sim):
    status, _, bought = sim_signed(sim, "POST", "/api/v3/order", market("BTCUSDT", "BUY", "0.00123"))
    assert (status, bought["fills"][0]["commission"]) == (200, "0.00000000")
    cost = Decimal(bought["cummulativeQuoteQty"])
    assert balances(sim)["USDT"] == (Decimal(100000) - cost, Decimal(0))
    _, _, account = sim_signed(sim, "GET", "/api/v3/account", {})
    assert (account["makerCommission"], account["commissionRates"]["taker"]) == (0, "0.00000000")
