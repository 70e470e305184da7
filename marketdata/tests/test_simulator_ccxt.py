"""ccxt's own `binance` class (sync) works against the simulator with nothing but URL
overrides and three options that keep load_markets() on spot endpoints."""

import json
import urllib.request
from datetime import UTC, datetime

import ccxt
import pytest

from marketdata.simulator import SimConfig, SimExchangeThread

START = int(datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(scope="module")
def sim():
    config = SimConfig(
        port=0,
        symbols=("BTCUSDT", "ETHUSDT", "SIM0001USDT"),
        start_ms=START,
        history_minutes=1440,
        speed=60.0,
    )
    with SimExchangeThread(config) as running:
        yield running


def binance(sim, **credentials):
    exchange = ccxt.binance(
        {
            **credentials,
            "enableRateLimit": False,
            # Spot only: no /fapi or /dapi exchangeInfo; with keys, no /sapi capital/config/getall
            # (currencies) and no /sapi margin/allPairs (margin pairs).
            "options": {"fetchMarkets": ["spot"], "fetchCurrencies": False, "fetchMargins": False},
        }
    )
    for name in list(exchange.urls["api"]):
        exchange.urls["api"][name] = (
            sim.urls.rest if name in ("public", "private") else f"{sim.urls.base}/{name}"
        )
    return exchange


def truth(sim, symbol, interval, start):
    url = f"{sim.urls.control}/closed?symbol={symbol}&interval={interval}&startTime={start}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_load_markets_fetch_time_and_ohlcv(sim):
    exchange = binance(sim)
    markets = exchange.load_markets()
    assert set(markets) == {"BTC/USDT", "ETH/USDT", "SIM0001/USDT"}
    btc = markets["BTC/USDT"]
    assert (btc["id"], btc["spot"], btc["active"]) == ("BTCUSDT", True, True)
    assert (btc["precision"]["amount"], btc["precision"]["price"]) == (1e-05, 0.01)
    assert btc["limits"]["amount"]["min"] == 1e-05
    assert btc["limits"]["cost"]["min"] == 5.0
    assert btc["limits"]["price"]["min"] == 0.01

    server_time = exchange.fetch_time()
    assert server_time >= START

    since = sim.exchange.market.history_start_ms + 7 * 60_000
    for timeframe, interval in (("1m", "1m"), ("5m", "5m"), ("1h", "1h")):
        candles = exchange.fetch_ohlcv("BTC/USDT", timeframe, since=since, limit=10)
        expected = truth(sim, "BTCUSDT", interval, since)[:10]
        assert len(candles) == 10
        assert candles == [[row[0], *(float(value) for value in row[1:6])] for row in expected]


def test_orders_balance_and_cancel_through_ccxt(sim):
    exchange = binance(sim, apiKey="sim-key", secret="sim-secret")
    exchange.load_markets()
    before = exchange.fetch_balance()
    assert before["USDT"]["free"] == 100000.0

    bought = exchange.create_order("BTC/USDT", "market", "buy", 0.001, params={"clientOrderId": "ccxt-m-1"})
    assert (bought["status"], bought["clientOrderId"], bought["filled"]) == ("closed", "ccxt-m-1", 0.001)
    assert bought["average"] > 0

    price = float(exchange.price_to_precision("ETH/USDT", bought["price"] / 40))  # far below ETH: rests
    resting = exchange.create_order(
        "ETH/USDT", "limit", "buy", 1, price, params={"clientOrderId": "ccxt-l-1"}
    )
    assert (resting["status"], resting["clientOrderId"]) == ("open", "ccxt-l-1")
    fetched = exchange.fetch_order(resting["id"], "ETH/USDT")
    assert (fetched["status"], fetched["price"], fetched["amount"]) == ("open", price, 1.0)
    assert [order["id"] for order in exchange.fetch_open_orders("ETH/USDT")] == [resting["id"]]

    balance = exchange.fetch_balance()
    assert balance["BTC"]["free"] == 0.001
    assert balance["USDT"]["used"] == pytest.approx(price)
    assert balance["USDT"]["free"] == pytest.approx(100000.0 - bought["cost"] - price)

    cancelled = exchange.cancel_order(resting["id"], "ETH/USDT")
    assert cancelled["status"] == "canceled"
    assert exchange.fetch_open_orders("ETH/USDT") == []
    assert exchange.fetch_balance()["USDT"]["used"] == 0.0
    with pytest.raises(ccxt.OrderNotFound):
        exchange.cancel_order(resting["id"], "ETH/USDT")
    with pytest.raises(ccxt.BadRequest, match="Filter failure: NOTIONAL"):
        exchange.create_order("BTC/USDT", "limit", "buy", 0.001, 1.0)
