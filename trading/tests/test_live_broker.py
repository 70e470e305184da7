"""LiveBroker against the simulator over real HTTP (signed requests, the sim's test keys), with
injected faults; the truth about what was placed comes from the simulator's `/_sim/orders`.
Coinbase, which nothing here serves, runs against a stub client."""

from __future__ import annotations

import itertools
import random
import re
from decimal import Decimal
from typing import Any

import ccxt
import pytest
from structlog.testing import capture_logs

from marketdata.simulator import SimConfig, SimExchangeThread
from marketdata.tests.ingest_harness import sim_faults, sim_get
from trading.brokers.base import BrokerError, BrokerUnavailable, Halted, OrderRefused, OutcomeUnknown
from trading.brokers.live import LiveBroker
from trading.core.types import OrderIntent, OrderStatus, OrderType, Side
from trading.credentials import ExchangeCredentials

SIM_CREDENTIALS = ExchangeCredentials(api_key="sim-key", secret="sim-secret")
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def sim():
    config = SimConfig(port=0, symbols=("BTCUSDT", "ETHUSDT"), history_minutes=60)
    with SimExchangeThread(config) as running:
        yield running


@pytest.fixture(autouse=True)
def no_faults(sim):
    sim_faults(sim, None)
    yield
    sim_faults(sim, None)


class Recorder:
    """The broker's sleep and on_error, remembered."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.errors: list[tuple[str, str]] = []

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)

    def on_error(self, kind: str, detail: str) -> None:
        self.errors.append((kind, detail))

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.errors]


def make_broker(sim, recorder: Recorder, *, credentials=SIM_CREDENTIALS, **options: Any) -> LiveBroker:
    return LiveBroker(
        exchange="sim",
        credentials=credentials,
        rest_url=sim.urls.base,
        sleep=recorder.sleep,
        on_error=recorder.on_error,
        rng=random.Random(7),
        **options,
    )


def cid(prefix: str) -> str:
    return f"t-{prefix}-{next(_ids)}"


def market(symbol: str, side: Side, quantity: str, client_order_id: str) -> OrderIntent:
    return OrderIntent(client_order_id, symbol, side, OrderType.MARKET, Decimal(quantity), Decimal(60000))


def limit(symbol: str, side: Side, quantity: str, price: Decimal, client_order_id: str) -> OrderIntent:
    return OrderIntent(client_order_id, symbol, side, OrderType.LIMIT, Decimal(quantity), price, price=price)


def truth(sim) -> Any:
    return sim_get(sim, "/_sim/orders")


def placed(sim, client_order_id: str) -> list[dict[str, Any]]:
    return [order for order in truth(sim)["orders"] if order["clientOrderId"] == client_order_id]


def warm(broker: LiveBroker) -> None:
    """Markets loaded, so that the faults set next meet the order requests."""
    broker.open_orders(["BTCUSDT"])


def last_price(sim, broker: LiveBroker) -> Decimal:
    probe = broker.submit(market("BTCUSDT", Side.BUY, "0.0001", cid("probe")))
    assert probe.average_price is not None
    return probe.average_price


def test_market_and_limit_round_trip_with_exact_decimals(sim):
    recorder = Recorder()
    broker = make_broker(sim, recorder)
    bought_id = cid("m")
    bought = broker.submit(market("BTCUSDT", Side.BUY, "0.00123", bought_id))

    [exchange] = placed(sim, bought_id)
    assert exchange["origQty"] == "0.00123000"
    assert bought.client_order_id == bought_id
    assert bought.exchange_order_id == str(exchange["orderId"])
    assert (bought.status, bought.type, bought.side) == (OrderStatus.FILLED, OrderType.MARKET, Side.BUY)
    assert bought.quantity == bought.filled_quantity == Decimal("0.00123")
    assert bought.price is None
    [fill] = bought.fills
    assert str(fill.quantity) == "0.00123000"
    assert fill.price * fill.quantity == Decimal(exchange["cummulativeQuoteQty"])
    assert bought.average_price == fill.price
    assert (fill.fee, fill.fee_asset, fill.is_maker) == (Decimal(0), "USDT", False)
    assert broker.orders_10s is not None
    assert broker.orders_10s >= 1
    assert broker.used_weight is not None
    assert broker.used_weight > 0

    # 0.00007 is 7e-05 as a float's str: only exact decimal text reaches the exchange intact.
    sold_id = cid("s")
    sold = broker.submit(market("BTCUSDT", Side.SELL, "0.00007", sold_id))
    assert (sold.side, sold.filled_quantity) == (Side.SELL, Decimal("0.00007"))
    assert placed(sim, sold_id)[0]["executedQty"] == "0.00007000"

    trades = broker.fills("BTCUSDT", since_ms=bought.updated_ms)
    assert [order_id for order_id, _ in trades][-2:] == [bought.exchange_order_id, sold.exchange_order_id]
    assert (bought.exchange_order_id, fill) in trades
    balances = {line.asset: line for line in broker.balances()}
    assert balances["BTC"].free >= Decimal("0.00116")
    assert broker.fetch_order("BTCUSDT", bought_id) is not None

    # Far below the market: it rests.
    price = (bought.average_price / 2).quantize(Decimal("0.01"))
    resting_id = cid("l")
    resting = broker.submit(limit("BTCUSDT", Side.BUY, "0.00321", price, resting_id))
    [exchange] = placed(sim, resting_id)
    assert (exchange["origQty"], Decimal(exchange["price"])) == ("0.00321000", price)
    assert (resting.status, resting.type, resting.price) == (OrderStatus.SUBMITTED, OrderType.LIMIT, price)
    assert resting.filled_quantity == 0
    assert resting.fills == ()
    assert resting_id in {order.client_order_id for order in broker.open_orders(["BTCUSDT"])}
    assert broker.fetch_order("BTCUSDT", resting_id) == resting
    assert broker.balances() != []

    canceled = broker.cancel("BTCUSDT", resting_id)
    assert (canceled.client_order_id, canceled.status) == (resting_id, OrderStatus.CANCELED)
    # Cancelling again (an earlier answer lost): the order as it stands, not an error.
    assert broker.cancel("BTCUSDT", resting_id).status is OrderStatus.CANCELED
    assert resting_id not in {order.client_order_id for order in broker.open_orders(["BTCUSDT"])}
    assert broker.fetch_order("BTCUSDT", cid("never")) is None
    with pytest.raises(BrokerError) as never:
        broker.cancel("BTCUSDT", cid("never"))
    assert never.value.reason == "order_not_found"
    assert recorder.errors == []
    assert recorder.delays == []
    broker.close()


@pytest.mark.parametrize(
    ("quantity", "kind", "expected"),
    [
        ("0.000015", OrderType.LIMIT, "-1013 Filter failure: LOT_SIZE"),
        ("2", OrderType.MARKET, "-2010 Account has insufficient balance for requested action."),
    ],
)
def test_refusal_is_final_and_not_retried(sim, quantity, kind, expected):
    recorder = Recorder()
    broker = make_broker(sim, recorder)
    price = last_price(sim, broker)
    before = truth(sim)["attempts"]
    client_order_id = cid("refused")
    intent = (
        limit("BTCUSDT", Side.BUY, quantity, price, client_order_id)
        if kind is OrderType.LIMIT
        else market("BTCUSDT", Side.BUY, quantity, client_order_id)
    )
    with pytest.raises(OrderRefused) as refused:
        broker.submit(intent)
    assert refused.value.reason == "exchange_rejected"
    assert expected in str(refused.value)
    assert truth(sim)["attempts"] == before + 1
    assert placed(sim, client_order_id) == []
    assert recorder.errors == []
    assert recorder.delays == []


def test_unknown_symbol_is_refused_without_sending(sim):
    recorder = Recorder()
    broker = make_broker(sim, recorder)
    before = truth(sim)["attempts"]
    with pytest.raises(OrderRefused) as refused:
        broker.submit(market("NOPEUSDT", Side.BUY, "1", cid("nope")))
    assert refused.value.reason == "unknown_symbol"
    assert truth(sim)["attempts"] == before


def test_server_errors_are_looked_up_then_resent_once(sim):
    """500 on the placement: the lookup (itself answered 502 once) finds no order, so the
    order is sent again with the same client order id, once."""
    recorder = Recorder()
    broker = make_broker(sim, recorder)
    warm(broker)
    before = truth(sim)
    sim_faults(sim, {"rest_error": {"status": "5xx", "count": 2}})
    client_order_id = cid("5xx")

    report = broker.submit(market("BTCUSDT", Side.BUY, "0.001", client_order_id))

    assert report.status is OrderStatus.FILLED
    after = truth(sim)
    assert after["faulted"] == before["faulted"] + 1  # the first placement
    assert after["attempts"] == before["attempts"] + 1  # the resend
    assert len(placed(sim, client_order_id)) == 1
    assert recorder.kinds == ["server_error", "server_error"]
    assert "HTTP 500" in recorder.errors[0][1]
    assert "HTTP 502" in recorder.errors[1][1]
    # Before the lookup, then between the two lookups: both first waits, 0.25-0.5 s; then until
    # the lost request's signature window has closed (5 s + 1 s margin), and a last lookup.
    assert len(recorder.delays) == 3
    assert all(0.25 <= delay <= 0.5 for delay in recorder.delays[:2])
    assert 5.0 <= recorder.delays[2] <= 6.0


def test_rate_limits_back_off_then_give_up(sim):
    recorder = Recorder()
    broker = make_broker(sim, recorder, max_attempts=3, base_delay_s=1.0)
    warm(broker)
    before = truth(sim)
    sim_faults(sim, {"rest_error": {"status": 429, "count": 10, "retry_after": 0}})
    client_order_id = cid("429")
    with pytest.raises(BrokerUnavailable) as unavailable:
        broker.submit(market("BTCUSDT", Side.BUY, "0.001", client_order_id))
    assert "rate_limited" in str(unavailable.value)
    assert recorder.kinds == ["rate_limited"] * 3
    # Exponential with jitter: attempt n waits between half and all of 1 s x 2^(n-1).
    assert len(recorder.delays) == 2
    assert 0.5 <= recorder.delays[0] <= 1.0
    assert 1.0 <= recorder.delays[1] <= 2.0
    assert truth(sim)["faulted"] == before["faulted"] + 3
    assert placed(sim, client_order_id) == []


def test_a_ban_honours_retry_after(sim):
    recorder = Recorder()
    broker = make_broker(sim, recorder)
    warm(broker)
    sim_faults(sim, {"rest_error": {"status": 418, "count": 1, "retry_after": 7}})
    client_order_id = cid("418")
    report = broker.submit(market("BTCUSDT", Side.BUY, "0.001", client_order_id))
    assert report.status is OrderStatus.FILLED
    assert recorder.kinds == ["banned"]
    assert recorder.delays == [7.0]
    assert len(placed(sim, client_order_id)) == 1


def test_a_ban_longer_than_max_wait_gives_up_at_once(sim):
    recorder = Recorder()
    broker = make_broker(sim, recorder, max_wait_s=30)
    warm(broker)
    sim_faults(sim, {"rest_error": {"status": 418, "count": 1, "retry_after": 600}})
    with pytest.raises(BrokerUnavailable):
        broker.submit(market("BTCUSDT", Side.BUY, "0.001", cid("ban")))
    assert recorder.kinds == ["banned"]
    assert recorder.delays == []


def test_server_errors_throughout_leave_the_outcome_unknown(sim):
    recorder = Recorder()
    broker = make_broker(sim, recorder, max_attempts=3)
    warm(broker)
    sim_faults(sim, {"rest_error": {"status": "5xx", "count": 50}})
    client_order_id = cid("unknown")
    with pytest.raises(OutcomeUnknown):
        broker.submit(market("BTCUSDT", Side.BUY, "0.001", client_order_id))
    # The placement and three lookups, each reported.
    assert recorder.kinds == ["server_error"] * 4
    sim_faults(sim, None)
    assert placed(sim, client_order_id) == []


@pytest.mark.parametrize("fault", [{"status": 429, "count": 5}, {"status": 500, "count": 1}])
def test_gate_closing_mid_retry_halts_without_sending(sim, fault):
    """The engine's kill switch trips on the first error: the next attempt meets a closed gate.
    For the 500 the order is first looked up (absent), and then not resent."""
    recorder = Recorder()
    gate_calls: list[bool] = []

    def gate() -> bool:
        gate_calls.append(not recorder.errors)
        return gate_calls[-1]

    broker = make_broker(sim, recorder, gate=gate)
    warm(broker)
    before = truth(sim)
    sim_faults(sim, {"rest_error": fault})
    client_order_id = cid("halt")
    with pytest.raises(Halted):
        broker.submit(market("BTCUSDT", Side.BUY, "0.001", client_order_id))
    assert gate_calls == [True, False]
    after = truth(sim)
    assert after["faulted"] == before["faulted"] + 1
    assert after["attempts"] == before["attempts"]  # no placement reached the exchange
    assert placed(sim, client_order_id) == []


def test_gate_closed_from_the_start_sends_nothing(sim):
    recorder = Recorder()
    broker = make_broker(sim, recorder, gate=lambda: False)
    before = truth(sim)["attempts"]
    with pytest.raises(Halted):
        broker.submit(market("BTCUSDT", Side.BUY, "0.001", cid("closed")))
    assert truth(sim)["attempts"] == before


def test_lost_answer_yields_the_one_order(sim):
    """The exchange places the order but its answer comes 2 s late; the broker gives up after
    0.5 s, looks the order up by client order id, and returns it: one order, no resend."""
    recorder = Recorder()
    broker = make_broker(sim, recorder, timeout_ms=500)
    warm(broker)
    before = truth(sim)["attempts"]
    sim_faults(sim, {"order_timeout": {"count": 1, "hold_s": 2}})
    client_order_id = cid("lost")

    report = broker.submit(market("BTCUSDT", Side.BUY, "0.00042", client_order_id))

    [exchange] = placed(sim, client_order_id)
    assert truth(sim)["attempts"] == before + 1
    assert report.exchange_order_id == str(exchange["orderId"])
    assert (report.status, report.filled_quantity) == (OrderStatus.FILLED, Decimal("0.00042"))
    assert recorder.kinds == ["timeout"]
    assert len(recorder.delays) == 1


def test_lost_answer_of_a_resting_limit_order(sim):
    recorder = Recorder()
    broker = make_broker(sim, recorder, timeout_ms=500)
    price = (last_price(sim, broker) / 3).quantize(Decimal("0.01"))
    sim_faults(sim, {"order_timeout": {"count": 1, "hold_s": 2}})
    client_order_id = cid("lost-limit")
    report = broker.submit(limit("BTCUSDT", Side.BUY, "0.001", price, client_order_id))
    assert len(placed(sim, client_order_id)) == 1
    assert (report.status, report.price) == (OrderStatus.SUBMITTED, price)
    broker.cancel("BTCUSDT", client_order_id)


SECRET = "wrong-secret-0123456789abcdef"
KEY = "wrong-key-ABCDEFGHIJKLMNOP"


@pytest.mark.parametrize(
    ("credentials", "code"),
    [
        (ExchangeCredentials(api_key="sim-key", secret=SECRET), "-1022"),  # bad signature
        (ExchangeCredentials(api_key=KEY, secret=SECRET), "-2015"),  # unknown key (401)
    ],
)
def test_secrets_never_appear_in_errors_or_logs(sim, credentials, code):
    recorder = Recorder()
    broker = make_broker(sim, recorder, credentials=credentials)
    with capture_logs() as logs, pytest.raises(OrderRefused) as refused:
        broker.submit(market("BTCUSDT", Side.BUY, "0.001", cid("auth")))
    assert refused.value.reason == "exchange_auth_failed"
    text = f"{refused.value} {refused.value.args!r} {logs!r} {recorder.errors!r}"
    assert code in text
    for secret in credentials.secrets:
        assert secret not in text
    assert refused.value.__cause__ is None
    with pytest.raises(BrokerError) as failed:
        warm(broker)
    assert failed.value.reason == "exchange_auth_failed"
    assert all(secret not in str(failed.value) for secret in credentials.secrets)
    assert credentials.secret not in repr(credentials)


def test_signatures_are_masked_in_timeout_messages(sim):
    """A signed GET that times out: ccxt's message quotes the URL, signature and all."""
    recorder = Recorder()
    broker = make_broker(sim, recorder, timeout_ms=300, max_attempts=2)
    warm(broker)
    sim_faults(sim, {"rest_latency_ms": 1000})
    with capture_logs() as logs, pytest.raises(BrokerUnavailable) as unavailable:
        broker.fetch_order("BTCUSDT", cid("slow"))
    text = f"{unavailable.value} {logs!r} {recorder.errors!r}"
    assert recorder.kinds == ["timeout", "timeout"]
    assert "signature=***" in str(unavailable.value)
    assert not re.search(r"signature=[0-9a-f]{16}", text)
    assert "sim-secret" not in text
    assert "sim-key" not in text


# Coinbase, against a stub of ccxt's client --------------------------------------------------


class StubCoinbase:
    """What LiveBroker asks of ccxt's coinbase client, answering as Advanced Trade v3 does."""

    markets_by_id = {"BTC-USD": [{"id": "BTC-USD", "symbol": "BTC/USD", "quote": "USD", "spot": True}]}

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.created: list[dict[str, Any]] = []
        self.orders: dict[str, dict[str, Any]] = {}
        self.refuse = False

    def on_rest_response(self, *args: Any) -> Any:
        return args[5]

    def load_markets(self) -> dict[str, Any]:
        return {"BTC/USD": self.markets_by_id["BTC-USD"][0]}

    def parse_order_status(self, status: str) -> str | None:
        return None

    def v3PrivatePostBrokerageOrders(self, request: dict[str, Any]) -> dict[str, Any]:
        self.created.append(request)
        if self.refuse:
            return {
                "success": False,
                "failure_reason": "UNKNOWN_FAILURE_REASON",
                "order_id": "",
                "error_response": {
                    "error": "INSUFFICIENT_FUND",
                    "message": "Insufficient balance in source account",
                    "new_order_failure_reason": "INSUFFICIENT_FUND",
                },
            }
        order_id = f"cb-{len(self.created)}"
        configuration = request["order_configuration"]
        self.orders[order_id] = {
            "order_id": order_id,
            "product_id": request["product_id"],
            "order_configuration": configuration,
            "side": request["side"],
            "client_order_id": request["client_order_id"],
            "status": "OPEN" if "limit_limit_gtc" in configuration else "FILLED",
            "created_time": "2024-03-01T12:00:00.123456789Z",
            "filled_size": "0" if "limit_limit_gtc" in configuration else "0.00123",
            "average_filled_price": "0" if "limit_limit_gtc" in configuration else "61234.56",
            "order_type": "LIMIT" if "limit_limit_gtc" in configuration else "MARKET",
        }
        return {
            "success": True,
            "order_id": order_id,
            "success_response": {
                "order_id": order_id,
                "product_id": request["product_id"],
                "side": request["side"],
                "client_order_id": request["client_order_id"],
            },
        }

    def v3PrivateGetBrokerageOrdersHistoricalOrderId(self, request):
        return {"order": self.orders[request["order_id"]]}

    def v3PrivateGetBrokerageOrdersHistoricalBatch(self, request):
        orders = list(self.orders.values())
        if request.get("order_status") == ["OPEN"]:
            orders = [order for order in orders if order["status"] == "OPEN"]
        return {"orders": orders, "has_next": False, "cursor": ""}

    def v3PrivatePostBrokerageOrdersBatchCancel(self, request):
        [order_id] = request["order_ids"]
        self.orders[order_id]["status"] = "CANCELLED"
        return {"results": [{"success": True, "order_id": order_id}]}

    def v3PrivateGetBrokerageOrdersHistoricalFills(self, request):
        return {
            "fills": [
                {
                    "trade_id": "tr-1",
                    "order_id": "cb-1",
                    "trade_time": "2024-03-01T12:00:00.5Z",
                    "price": "61234.56",
                    "size": "0.00123",
                    "commission": "0.45185",
                    "liquidity_indicator": "TAKER",
                    "size_in_quote": False,
                }
            ],
            "cursor": "",
        }

    def v3PrivateGetBrokerageAccounts(self, request):
        return {
            "accounts": [
                {"currency": "USD", "available_balance": {"value": "99924.31"}, "hold": {"value": "10.5"}},
                {"currency": "ETH", "available_balance": {"value": "0"}, "hold": {"value": "0"}},
            ],
            "has_next": False,
            "cursor": "",
        }


def test_coinbase_requests_and_conversions(monkeypatch):
    stubs: list[StubCoinbase] = []

    def build(config: dict[str, Any]) -> StubCoinbase:
        stubs.append(StubCoinbase(config))
        return stubs[-1]

    monkeypatch.setattr(ccxt, "coinbase", build)
    broker = LiveBroker(
        exchange="coinbase",
        credentials=ExchangeCredentials(api_key="organizations/x/apiKeys/y", secret="pem"),
    )
    [stub] = stubs
    assert (stub.config["apiKey"], stub.config["secret"]) == ("organizations/x/apiKeys/y", "pem")

    bought = broker.submit(market("BTCUSD", Side.BUY, "0.00123", "cb-m-1"))
    assert stub.created[0]["client_order_id"] == "cb-m-1"
    assert stub.created[0]["product_id"] == "BTC-USD"
    assert stub.created[0]["order_configuration"] == {"market_market_ioc": {"base_size": "0.00123"}}
    assert (bought.status, bought.exchange_order_id) == (OrderStatus.SUBMITTED, "cb-1")

    fetched = broker.fetch_order("BTCUSD", "cb-m-1")
    assert fetched is not None
    assert (fetched.status, fetched.filled_quantity, fetched.average_price) == (
        OrderStatus.FILLED,
        Decimal("0.00123"),
        Decimal("61234.56"),
    )
    assert fetched.updated_ms == 1709294400123

    resting = broker.submit(limit("BTCUSD", Side.BUY, "0.5", Decimal("30000.01"), "cb-l-1"))
    assert stub.created[1]["order_configuration"] == {
        "limit_limit_gtc": {"base_size": "0.5", "limit_price": "30000.01", "post_only": False}
    }
    assert [order.client_order_id for order in broker.open_orders(["BTCUSD"])] == ["cb-l-1"]
    canceled = broker.cancel("BTCUSD", resting.client_order_id)
    assert (canceled.status, canceled.price, canceled.quantity) == (
        OrderStatus.CANCELED,
        Decimal("30000.01"),
        Decimal("0.5"),
    )

    [(order_id, fill)] = broker.fills("BTCUSD", since_ms=0)
    assert order_id == "cb-1"
    assert (fill.price, fill.quantity, fill.fee, fill.fee_asset) == (
        Decimal("61234.56"),
        Decimal("0.00123"),
        Decimal("0.45185"),
        "USD",
    )
    assert fill.time_ms == 1709294400500
    assert [(line.asset, line.free, line.locked) for line in broker.balances()] == [
        ("USD", Decimal("99924.31"), Decimal("10.5"))
    ]

    stub.refuse = True
    with pytest.raises(OrderRefused, match="INSUFFICIENT_FUND"):
        broker.submit(market("BTCUSD", Side.BUY, "100", "cb-m-2"))
