"""Dashboard pages and their JSON, rendered from real rows written through the apps' services:
real candles (one imputed), the demo rule active, a signal, a dry-run order, an equity
snapshot, a gap and an alert. (The live half is in test_consumers and the browser test.)"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from waffle.testutils import override_flag

from marketdata.core.timeframes import Timeframe
from marketdata.models import Gap, Symbol
from marketdata.services import CandleWrite, candles_upsert_closed
from marketdata.tests.factories import SymbolFactory
from marketdata.tests.shared_data import real_klines
from oasis_site.dashboard import selectors
from oasis_site.flags import API_AUTH_REQUIRED
from rules.models import RuleConfig, Signal
from trading.core.types import KillSwitchState, OrderIntent, OrderType, Side
from trading.killswitch import killswitch_engage
from trading.models import BacktestRun, Mode
from trading.services import balance_set, equity_snapshot_take, order_create

pytestmark = pytest.mark.django_db

CANDLES = 120


def page_data(response: Any, script_id: str) -> dict[str, Any]:
    """The JSON a page rendered for its script (json_script), as the browser reads it."""
    html = response.content.decode()
    start = html.index(f'<script id="{script_id}" type="application/json">') + len(
        f'<script id="{script_id}" type="application/json">'
    )
    data: dict[str, Any] = json.loads(html[start : html.index("</script>", start)])
    return data


@pytest.fixture
def desk(settings) -> dict[str, Any]:
    settings.OASIS_EXCHANGE = "sim"
    settings.OASIS_PROCESS_METRICS_URLS = {}
    btc = SymbolFactory.create(symbol="BTCUSDT", base="BTC")
    eth = SymbolFactory.create(symbol="ETHUSDT", base="ETH")
    klines = real_klines("BTCUSDT", CANDLES)
    writes = [
        CandleWrite(symbol_id=btc.pk, kline=kline, source="ws", imputed=index == CANDLES - 10)
        for index, kline in enumerate(klines)
    ]
    writes += [
        CandleWrite(symbol_id=eth.pk, kline=replace(k, symbol="ETHUSDT"), source="rest") for k in klines[:5]
    ]
    candles_upsert_closed(writes=writes)
    call_command("seed_demo_rule", symbols="BTCUSDT,ETHUSDT", verbosity=0)
    config = RuleConfig.objects.get()
    assert config.active_version is not None
    last = klines[-1]
    signal = Signal.objects.create(
        symbol=btc,
        timeframe="1m",
        open_time=datetime.fromtimestamp(last.open_time_ms / 1000, UTC),
        rule_version=config.active_version,
        action=Signal.Action.ENTER,
        indicators={"close": float(last.close)},
        computed_at=datetime.fromtimestamp(last.open_time_ms / 1000, UTC) + timedelta(seconds=60.2),
    )
    order = order_create(
        intent=OrderIntent(
            client_order_id="oas-dashboard-test-0001",
            symbol="BTCUSDT",
            side=Side.BUY,
            type=OrderType.MARKET,
            quantity=Decimal("0.00432000"),
            reference_price=last.close,
        ),
        symbol=btc,
        mode=Mode.DRY_RUN,
        exchange="sim",
        requested_quantity=Decimal("0.00432123"),
        signal=signal,
        rule_version=config.active_version,
    )
    # An order of the charted period (a replay's clock), drawn on the symbol page.
    order_create(
        intent=OrderIntent(
            client_order_id="oas-dashboard-test-0002",
            symbol="BTCUSDT",
            side=Side.SELL,
            type=OrderType.LIMIT,
            quantity=Decimal("0.00100000"),
            reference_price=klines[-3].close,
            price=klines[-3].close,
        ),
        symbol=btc,
        mode=Mode.DRY_RUN,
        exchange="sim",
        requested_quantity=Decimal("0.001"),
        now=datetime.fromtimestamp(klines[-3].open_time_ms / 1000, UTC) + timedelta(seconds=61),
    )
    balance_set(
        mode=Mode.DRY_RUN,
        asset="USDT",
        free=Decimal("10000"),
        locked=Decimal(0),
        actor="cli:test",
        reason="seed",
    )
    equity_snapshot_take(mode=Mode.DRY_RUN, quote_asset="USDT")
    moment = datetime.fromtimestamp(klines[50].open_time_ms / 1000, UTC)
    Gap.objects.create(
        symbol=btc,
        timeframe="1m",
        start=moment,
        end=moment + timedelta(minutes=2),
        detected_at=moment,
        reason="",
    )
    killswitch_engage(state=KillSwitchState.HALTED, reason="desk drill", actor="cli:ops")
    return {"btc": btc, "eth": eth, "klines": klines, "signal": signal, "order": order, "config": config}


def test_overview_shows_heatmap_tiles_alerts_and_the_kill_switch(desk, django_assert_max_num_queries):
    client = Client()
    with django_assert_max_num_queries(25):
        response = client.get("/")
    assert response.status_code == 200
    data = page_data(response, "overview-data")
    heat = data["heatmap"]
    assert heat["symbols"] == ["BTCUSDT", "ETHUSDT"]
    assert heat["timeframes"] == ["1m", "3m", "5m", "10m", "15m", "1h", "4h"]
    last = desk["klines"][-1]
    expected = float((last.close - last.open) / last.open * 100)
    assert math.isclose(heat["returns_pct"][0][0], round(expected, 4))
    assert heat["cells"][0][0]["signal"] == "enter"
    assert heat["cells"][0][0]["close"] == f"{last.close:f}"
    assert heat["cells"][1][0]["signal"] is None
    assert heat["returns_pct"][0][1] is None  # no 3m candles stored
    levels = data["service_levels"]
    assert levels["open_gaps"] == 1
    assert levels["orders_today"] in (0, 1)  # the order was made "now"; today is UTC
    assert data["killswitch"]["state"] == "halted"
    assert data["killswitch"]["reason"] == "desk drill"
    [alert] = data["alerts"]
    assert (alert["key"], alert["severity"], alert["state"]) == ("killswitch", "critical", "firing")
    assert alert["title"] == "Kill switch HALTED: desk drill"
    [incident] = data["incidents"]["open"]
    assert incident["severity"] == "critical"
    assert incident["alerts"] == 1
    assert data["incidents"]["overdue_actions"] == []
    assert page_data(response, "killswitch-data")["state"] == "halted"
    assert client.get("/overview.json").json()["heatmap"] == heat


def test_symbol_page_has_candles_overlays_markers_and_imputed_candles(desk):
    response = Client().get("/symbols/BTCUSDT/?tf=1m")
    assert response.status_code == 200
    data = page_data(response, "chart-data")
    assert len(data["candles"]) == CANDLES
    assert [candle["imputed"] for candle in data["candles"]].count(True) == 1
    assert data["candles"][CANDLES - 10]["imputed"] is True
    first = desk["klines"][0]
    assert data["candles"][0] == {
        "t": first.open_time_ms,
        "o": float(first.open),
        "h": float(first.high),
        "l": float(first.low),
        "c": float(first.close),
        "v": float(first.volume),
        "imputed": False,
    }
    names = sorted(overlay["name"] for overlay in data["overlays"])
    assert names == ["fast", "rsi", "slow"]
    panels = {overlay["name"]: overlay["panel"] for overlay in data["overlays"]}
    assert panels == {"fast": "price", "slow": "price", "rsi": "oscillator"}
    fast = next(overlay for overlay in data["overlays"] if overlay["name"] == "fast")
    assert len(fast["values"]) == CANDLES
    assert fast["values"][0] is None
    assert fast["values"][-1] is not None
    assert [signal["action"] for signal in data["signals"]] == ["enter"]
    assert data["signals"][0]["t"] == desk["klines"][-1].open_time_ms + Timeframe.M1.ms
    # The order made "now" is years after the candles shown: only the replayed one is drawn.
    assert [(order["client_order_id"], order["side"]) for order in data["orders"]] == [
        ("oas-dashboard-test-0002", "sell")
    ]
    assert data["orders"][0]["price"] == float(desk["klines"][-3].close)
    html = response.content.decode()
    for tf in ("1m", "3m", "5m", "10m", "15m", "1h", "4h"):
        assert f'href="?tf={tf}"' in html
    assert Client().get("/symbols/BTCUSDT/chart.json?tf=1m").json() == data


def test_symbol_page_refuses_a_bad_timeframe_and_an_unknown_symbol(desk):
    client = Client()
    response = client.get("/symbols/BTCUSDT/?tf=2m")
    assert response.status_code == 400
    assert 'data-parameter="tf"' in response.content.decode()
    response = client.get("/symbols/BTCUSDT/chart.json?tf=2m")
    assert response.status_code == 400
    assert response.json()["parameter"] == "tf"
    assert client.get("/symbols/NOPEUSDT/").status_code == 404
    assert client.get("/symbols/").status_code == 302


def test_trading_page_shows_orders_positions_and_equity(desk):
    response = Client().get("/trading/")
    assert response.status_code == 200
    data = page_data(response, "trading-data")
    assert [order["client_order_id"] for order in data["orders"]] == [
        "oas-dashboard-test-0001",
        "oas-dashboard-test-0002",
    ]
    assert data["orders"][0]["quantity"] == "0.00432000"
    assert data["equity"]["equity"] == [10000.0]
    assert data["latest"]["equity"] == "10000"
    assert data["backtests"] == []
    assert "none yet" in response.content.decode()
    run = BacktestRun.objects.create(
        rule_version=desk["config"].active_version,
        rule_checksum="0" * 64,
        parameters={
            "symbols": ["BTCUSDT"],
            "since": "2023-03-01T01:00:00+00:00",
            "until": "2023-03-02T00:00:00+00:00",
        },
        status=BacktestRun.Status.SUCCEEDED,
        results={"net_pnl": "12.50", "equity_curve": {"times_ms": list(range(1000))}},
        created_by="cli:test",
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
    )
    response = Client().get("/trading/")
    [listed] = page_data(response, "trading-data")["backtests"]
    assert listed["net_pnl"] == "12.50"
    assert listed["report"] == f"/trading/backtests/{run.pk}/report/"
    assert f'href="/trading/backtests/{run.pk}/report/"' in response.content.decode()
    assert Client().get("/trading/?mode=live").status_code == 200
    response = Client().get("/trading.json?mode=paper")
    assert response.status_code == 400
    assert response.json()["parameter"] == "mode"


def test_operations_page_shows_gaps_lag_backfills_and_queues(desk, settings):
    settings.OASIS_PROCESS_METRICS_URLS = {"ingest": "http://127.0.0.1:9/metrics"}
    response = Client().get("/operations/")
    assert response.status_code == 200
    data = page_data(response, "operations-data")
    assert [(gap["symbol"], gap["status"]) for gap in data["gaps"]] == [("BTCUSDT", "open")]
    lag = {(row["symbol"], row["timeframe"]): row for row in data["data_lag"]}
    assert set(lag) == {("BTCUSDT", "1m"), ("ETHUSDT", "1m")}
    assert lag[("BTCUSDT", "1m")]["lag_s"] > 0
    assert data["processes"]["reachable"]["ingest"].startswith("unreachable")
    if settings.REDIS_URL:
        assert data["celery"]["broker"] == "redis"
    else:
        assert data["celery"]["broker"] == "none"


def test_process_metrics_are_read_from_a_processes_own_endpoint(metrics_endpoint):
    found = selectors.process_metrics({"ingest": metrics_endpoint("BTCUSDT", 1.5, 3)})
    assert found["reachable"] == {"ingest": "ok"}
    assert {"symbol": "BTCUSDT", "timeframe": "1m", "seconds": 1.5} in found["buffer_lag"]
    assert found["ws_reconnects"] == {"sim": 3.0}


def test_every_ingest_shard_is_read(metrics_endpoint, settings):
    """Two shards (OASIS_INGEST_METRICS_URL lists both): each one's buffers, reconnects added up,
    and a shard that does not answer named as such."""
    from oasis_site import settings as site_settings
    from oasis_site.environment import read_environment

    first, second = metrics_endpoint("BTCUSDT", 1.5, 3), metrics_endpoint("ETHUSDT", 4.0, 2)
    env = read_environment(
        {"OASIS_ENV": "test", "OASIS_INGEST_METRICS_URL": f"{first},{second},http://127.0.0.1:9/metrics"},
        base_dir=site_settings.BASE_DIR,
    )
    settings.OASIS_PROCESS_METRICS_URLS = env.process_metrics_urls
    assert list(env.process_metrics_urls) == ["ingest-0", "ingest-1", "ingest-2", "trade"]
    found = selectors.process_metrics({k: v for k, v in env.process_metrics_urls.items() if k != "trade"})
    assert found["reachable"]["ingest-0"] == found["reachable"]["ingest-1"] == "ok"
    assert found["reachable"]["ingest-2"].startswith("unreachable")
    lags = {(row["symbol"], row["seconds"]) for row in found["buffer_lag"]}
    assert lags == {("BTCUSDT", 1.5), ("ETHUSDT", 4.0)}
    assert found["ws_reconnects"] == {"sim": 5.0}


@pytest.fixture
def metrics_endpoint():
    """Real /metrics endpoints, as an ingest process serves them, each on a free port."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

    servers = []

    def serve(symbol: str, lag_s: float, reconnects: int) -> str:
        registry = CollectorRegistry()
        Gauge("oasis_ingest_buffer_lag_seconds", "lag", ["symbol", "timeframe"], registry=registry).labels(
            symbol, "1m"
        ).set(lag_s)
        Counter("oasis_ingest_ws_reconnects_total", "reconnects", ["exchange"], registry=registry).labels(
            "sim"
        ).inc(reconnects)
        server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}/metrics"

    try:
        yield serve
    finally:
        for server, thread in servers:
            server.shutdown()
            thread.join(timeout=5)


def test_with_the_auth_flag_on_pages_need_a_login(desk):
    with override_flag(API_AUTH_REQUIRED, active=True):
        client = Client()
        response = client.get("/trading/")
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]
        assert client.get("/overview.json").status_code == 401
    assert Client().get("/trading/").status_code == 200


def test_every_symbol_in_the_nav_has_a_page(desk):
    assert Symbol.objects.count() == 2
    for symbol in ("BTCUSDT", "ETHUSDT"):
        for tf in selectors.TIMEFRAMES:
            assert Client().get(f"/symbols/{symbol}/?tf={tf}").status_code == 200


def test_incidents_page_lists_open_incidents_and_overdue_actions(desk):
    from audit.alerting import incident_action_add
    from audit.models import Incident

    incident = Incident.objects.get()  # the kill switch's
    incident_action_add(
        incident=incident,
        description="page the exchange's status feed",
        owner="ops",
        due_date=(datetime.now(UTC) - timedelta(days=2)).date(),
        actor="cli:ops",
    )
    response = Client().get("/incidents/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Kill switch HALTED: desk drill" in html
    assert "page the exchange&#x27;s status feed" in html
    assert f'href="/admin/audit/incident/{incident.pk}/change/"' in html
