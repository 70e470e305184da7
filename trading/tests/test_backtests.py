"""Backtest runs over stored candles: a run is stored with what it was asked and what it used;
bad input is refused with a message naming what is wrong, and nothing is stored as successful."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import numpy as np
import pytest
from django.contrib.staticfiles import finders
from django.core.management import CommandError, call_command

from marketdata.core.timeframes import Timeframe
from marketdata.models import Candle, Symbol
from marketdata.services import CandleWrite, candles_upsert_closed
from marketdata.tests.factories import SymbolFactory
from marketdata.tests.shared_data import real_klines
from rules.services import rule_config_create, rule_version_activate
from trading.backtests import BacktestInputError, BacktestRequest, backtest_run
from trading.models import BacktestRun

pytestmark = pytest.mark.django_db

ROWS = 1500
SPEC: dict[str, Any] = {
    "timeframes": ["1m"],
    "indicators": {"fast": {"kind": "ema", "period": 9}, "slow": {"kind": "ema", "period": 21}},
    "entry": "fast crosses_above slow",
    "exit": "fast crosses_below slow",
    "sizing": {"quote_amount": "250"},
    "limits": {"max_position_per_symbol": "1000", "max_position_total": "5000"},
}
FILTERS = [
    {"filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "1000000.00", "tickSize": "0.01"},
    {"filterType": "LOT_SIZE", "minQty": "0.00001", "maxQty": "9000", "stepSize": "0.00001"},
    {"filterType": "NOTIONAL", "minNotional": "5.00", "maxNotional": "9000000.00"},
]


@pytest.fixture
def history() -> tuple[Symbol, datetime, datetime]:
    symbol = SymbolFactory.create(symbol="BTCUSDT", base="BTC", filters=FILTERS)
    klines = real_klines("BTCUSDT", ROWS)
    candles_upsert_closed(writes=[CandleWrite(symbol.pk, k, "rest") for k in klines])
    config = rule_config_create(
        name="ema", description="", symbols=["BTCUSDT"], spec=SPEC, author="system:test"
    )
    rule_version_activate(version=config.versions.get(), actor="system:test")
    first = datetime.fromtimestamp(klines[0].open_time_ms / 1000, tz=UTC)
    return symbol, first, first + timedelta(minutes=ROWS)


def request(first: datetime, end: datetime, **changes: Any) -> BacktestRequest:
    fields: dict[str, Any] = {
        "rule": "ema",
        "since": first + timedelta(minutes=100),
        "until": end,
        "exchange": "sim",
    }
    return BacktestRequest(**{**fields, **changes})


def test_a_run_is_stored_with_its_inputs_and_results(history: tuple[Symbol, datetime, datetime]) -> None:
    _, first, end = history
    run, result = backtest_run(request=request(first, end), actor="system:test")
    assert run.status == BacktestRun.Status.SUCCEEDED
    assert result is not None
    assert run.candles == ROWS - 100
    assert run.imputed_candles == 0
    assert run.rule_checksum == run.rule_version.checksum
    assert run.parameters["symbols"] == ["BTCUSDT"]
    assert run.parameters["fee_bps"] == "10"
    assert run.results["orders"] == len(result.orders) >= 10
    assert run.results["trade_count"] >= 5
    assert Decimal(run.results["final_equity"]) - Decimal(10_000) == Decimal(run.results["net_pnl"])
    assert run.results["max_drawdown_pct"] >= 0
    assert len(run.results["fills"]) == run.results["filled"]
    assert run.results["filled"] >= 10
    assert Decimal(run.results["fees"]) > 0
    for order in result.orders:
        assert order.fill is None or order.signal is None or order.fill.time_ms >= order.signal.close_ms


def test_the_command_prints_the_run_as_json(history: tuple[Symbol, datetime, datetime]) -> None:
    _, first, end = history
    out = StringIO()
    call_command(
        "backtest",
        "--rule=ema",
        "--exchange=sim",
        f"--since={(first + timedelta(minutes=100)).isoformat()}",
        f"--until={end.isoformat()}",
        "--fee=0",
        "--slippage=0",
        "--json",
        stdout=out,
    )
    document = json.loads(out.getvalue())
    assert document["status"] == "succeeded"
    assert document["parameters"]["fee_bps"] == "0"
    assert Decimal(document["results"]["fees"]) == 0
    assert BacktestRun.objects.get(pk=document["id"]).status == "succeeded"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rule": "nope"}, "no rule named 'nope' (rules: ema)"),
        ({"version": 7}, "rule 'ema' has no version 7 (latest: 1)"),
        ({"symbols": ["ETHUSDT"]}, "unknown symbol(s) on sim: ETHUSDT"),
        ({"timeframes": ["5m"]}, "timeframe(s) 5m are not in the rule's spec (1m)"),
        ({"fee_bps": Decimal(5000)}, "--fee must be a Decimal between 0 and 1000 bps"),
    ],
)
def test_bad_requests_are_refused_by_name(
    history: tuple[Symbol, datetime, datetime], changes: dict[str, Any], message: str
) -> None:
    _, first, end = history
    with pytest.raises(BacktestInputError) as refused:
        backtest_run(request=request(first, end, **changes), actor="system:test")
    assert message in str(refused.value)
    assert not BacktestRun.objects.exists()


def test_a_range_without_candles_or_backwards_is_refused(history: tuple[Symbol, datetime, datetime]) -> None:
    _, first, end = history
    with pytest.raises(BacktestInputError, match="no 1m candles of BTCUSDT on sim between"):
        backtest_run(request=request(end, end + timedelta(days=1), since=end), actor="system:test")
    with pytest.raises(BacktestInputError, match="is not before --until"):
        backtest_run(request=request(first, first, since=first), actor="system:test")
    assert not BacktestRun.objects.exists()


def test_too_many_imputed_candles_are_refused(history: tuple[Symbol, datetime, datetime]) -> None:
    symbol, first, end = history
    since = first + timedelta(minutes=100)
    imputed = Candle.objects.filter(symbol=symbol, timeframe="1m", open_time__gte=since).order_by(
        "open_time"
    )[:20]
    Candle.objects.filter(pk__in=[c.pk for c in imputed]).update(is_imputed=True, imputed_inputs=1)
    with pytest.raises(
        BacktestInputError, match=r"20 of 1400 1m candles in the range are imputed \(1.43 %\)"
    ):
        backtest_run(request=request(first, end), actor="system:test")
    run, _ = backtest_run(request=request(first, end, max_imputed_pct=Decimal(2)), actor="system:test")
    assert run.imputed_candles == 20


def test_the_command_refuses_bad_options(history: tuple[Symbol, datetime, datetime]) -> None:
    with pytest.raises(CommandError, match="'yesterday' is not an ISO time"):
        call_command("backtest", "--rule=ema", "--since=yesterday", "--until=2024-01-01T00:00Z")
    with pytest.raises(CommandError, match="no rule named 'x'"):
        call_command("backtest", "--rule=x", "--since=2024-01-01T00:00Z", "--until=2024-01-02T00:00Z")


def test_the_report_draws_candles_entries_exits_equity_and_drawdown(
    history: tuple[Symbol, datetime, datetime], admin_client: Any, client: Any
) -> None:
    _, first, end = history
    run, _ = backtest_run(request=request(first, end), actor="system:test")
    document = admin_client.get(f"/trading/backtests/{run.pk}/report.json").json()
    traces = {trace.get("name"): trace for trace in document["figure"]["data"]}
    candles = traces["BTCUSDT"]
    assert candles["type"] == "candlestick"
    assert len(candles["x"]) == ROWS - 100  # 1m: the range fits in the chart
    fills = run.results["fills"]
    assert len(traces["entries"]["x"]) == sum(1 for f in fills if f["side"] == "buy")
    assert len(traces["exits"]["x"]) == sum(1 for f in fills if f["side"] == "sell")
    assert [float(f["price"]) for f in fills if f["side"] == "buy"] == traces["entries"]["y"]
    assert traces["equity"]["y"] == run.results["equity_curve"]["equity"]
    assert traces["drawdown"]["y"] == run.results["equity_curve"]["drawdown_pct"]
    assert document["results"]["net_pnl"] == run.results["net_pnl"]

    page = admin_client.get(f"/trading/backtests/{run.pk}/report/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "plotly/plotly.min.js" in html
    assert 'id="backtest-figure-data"' in html
    assert run.results["net_pnl"] in html
    assert finders.find("plotly/plotly.min.js")  # served locally, from the pinned package
    changelist = admin_client.get("/admin/trading/backtestrun/").content.decode()
    assert f"/trading/backtests/{run.pk}/report/" in changelist
    assert client.get(f"/trading/backtests/{run.pk}/report/").status_code == 302  # staff only


def _impute_first(symbol: Symbol, since: datetime, count: int) -> None:
    chosen = Candle.objects.filter(symbol=symbol, timeframe="1m", open_time__gte=since).order_by("open_time")[
        :count
    ]
    Candle.objects.filter(pk__in=[c.pk for c in chosen]).update(is_imputed=True, imputed_inputs=1)


def _strict_rule(imputed_pct: str) -> None:
    spec = {**SPEC, "drift_tolerance": {"imputed_pct": imputed_pct}}
    config = rule_config_create(
        name="strict", description="", symbols=["BTCUSDT"], spec=spec, author="system:test"
    )
    rule_version_activate(version=config.versions.get(), actor="system:test")


def test_the_rules_imputed_tolerance_refuses_a_range_the_default_would_take(
    history: tuple[Symbol, datetime, datetime],
) -> None:
    symbol, first, end = history
    _strict_rule("0.5")
    _impute_first(symbol, first + timedelta(minutes=100), 10)  # 10 of 1,400: 0.71 %
    run, _ = backtest_run(request=request(first, end), actor="system:test")  # "ema": 1 % by default
    assert run.status == BacktestRun.Status.SUCCEEDED
    with pytest.raises(BacktestInputError) as refused:
        backtest_run(request=request(first, end, rule="strict"), actor="system:test")
    assert str(refused.value) == (
        "10 of 1400 1m candles in the range are imputed (0.71 %), more than the 0.5 % version 1 of "
        "'strict' (drift_tolerance.imputed_pct) allows: a backtest on them would measure the imputation"
    )
    assert not BacktestRun.objects.filter(rule_version__config__name="strict").exists()
    # The request's own limit, when given, is the one that applies.
    run, _ = backtest_run(request=request(first, end, rule="strict", max_imputed_pct=Decimal(1)), actor="t")
    assert run.status == BacktestRun.Status.SUCCEEDED
    assert run.imputed_candles == 10
    with pytest.raises(BacktestInputError, match=r"more than the 0.1 % the request allows"):
        backtest_run(request=request(first, end, max_imputed_pct=Decimal("0.1")), actor="system:test")


def test_a_looser_rule_tolerance_takes_more_imputed_candles(
    history: tuple[Symbol, datetime, datetime],
) -> None:
    symbol, first, end = history
    _strict_rule("2")
    _impute_first(symbol, first + timedelta(minutes=100), 20)  # 1.43 %: over the default 1 %
    with pytest.raises(BacktestInputError, match=r"more than the 1 % version 1 of 'ema'"):
        backtest_run(request=request(first, end), actor="system:test")
    run, _ = backtest_run(request=request(first, end, rule="strict"), actor="system:test")
    assert run.status == BacktestRun.Status.SUCCEEDED
    assert run.imputed_candles == 20


def test_a_long_span_read_in_parts_is_the_same_read(
    history: tuple[Symbol, datetime, datetime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a long span is read in parts, each asked for while the previous one is
    parsed: the columns and exact prices are those of a read in one statement, a part with no
    candle included, and a read abandoned half-way leaves the connection usable. Inside a
    transaction (this test's) every part goes through Django's connection."""
    _parts_read_the_same(history, monkeypatch, connections=1)


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_parts_are_read_over_two_connections(
    history: tuple[Symbol, datetime, datetime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside a transaction every other part is read by a second connection of the read's
    own, at the same time: the same columns and exact prices, the second connection closed
    after the read, also after a read abandoned with parts in flight on both."""
    _parts_read_the_same(history, monkeypatch, connections=2)


@pytest.mark.django_db(transaction=True)
def test_a_second_connection_that_does_not_open_leaves_the_read_to_one(
    history: tuple[Symbol, datetime, datetime],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from django.db import connection

    from trading import backtests

    if connection.vendor != "postgresql":
        pytest.skip("the parts are PostgreSQL's")
    symbol, first, end = history
    params = connection.get_connection_params()
    monkeypatch.setattr(connection, "get_connection_params", lambda: {**params, "dbname": "no_such_database"})
    monkeypatch.setattr(backtests, "_PART_MINUTES", 180)
    parts = backtests._stored_candles(symbol.pk, Timeframe.M1, since=first, until=end)
    assert parts.open_ms.size == ROWS
    assert "a second did not open" in caplog.text
    assert "no_such_database" in caplog.text


def _parts_read_the_same(
    history: tuple[Symbol, datetime, datetime], monkeypatch: pytest.MonkeyPatch, *, connections: int
) -> None:
    from django.db import connection

    from trading import backtests

    if connection.vendor != "postgresql":
        pytest.skip("the parts are PostgreSQL's")
    opened: list[Any] = []
    real_reader = backtests._reader

    def reader() -> Any:
        second = real_reader()
        assert second is not None
        opened.append(second)
        return second

    monkeypatch.setattr(backtests, "_reader", reader)
    symbol, first, end = history
    Candle.objects.filter(
        symbol=symbol,
        open_time__gte=first + timedelta(minutes=550),
        open_time__lt=first + timedelta(minutes=1000),
    ).delete()
    # Flags that are not the usual ones (closed, not imputed), in some parts and not others.
    _impute_first(symbol, first + timedelta(minutes=20), 5)
    Candle.objects.filter(symbol=symbol, open_time=first + timedelta(minutes=1200)).update(is_closed=False)
    since, until = first - timedelta(minutes=7), end + timedelta(minutes=3)
    whole = backtests._stored_candles(symbol.pk, Timeframe.M1, since=since, until=until)
    monkeypatch.setattr(backtests, "_PART_MINUTES", 180)  # 8 parts of 189 minutes, two of them empty
    read = list(backtests._stored_parts(symbol.pk, Timeframe.M1, since, until))
    assert len(read) == 8
    assert sum(part.times is None for part in read) == 2
    parts = backtests._stored_candles(symbol.pk, Timeframe.M1, since=since, until=until)
    assert parts.open_ms.size == ROWS - 450
    orm = backtests._stored_candles_orm(symbol.pk, Timeframe.M1, since, until)
    assert np.count_nonzero(orm.imputed) == 5
    assert np.count_nonzero(~orm.closed) == 1
    for column in ("open_ms", "closed", "imputed", "open", "high", "low", "close", "volume"):
        assert np.array_equal(getattr(parts, column), getattr(whole, column)), column
        assert np.array_equal(getattr(parts, column), getattr(orm, column)), column
    for row in range(parts.open_ms.size):
        assert parts.exact(row) == whole.exact(row)
        assert parts.exact(row)[3] == parts.exact_close(row)
        assert str(parts.exact(row)[0]) == str(whole.exact(row)[0])  # the stored digits, exponent kept

    with connection.cursor() as cursor:  # JIT is off while candles are read, then as it was
        cursor.execute("SET jit = on")
        backtests._stored_candles(symbol.pk, Timeframe.M1, since=since, until=until)
        cursor.execute("SHOW jit")
        assert cursor.fetchone()[0] == "on"

    reading = backtests._stored_parts(symbol.pk, Timeframe.M1, since, until)
    next(reading)
    reading.close()  # the next part was in flight (on each connection, with two)
    assert Candle.objects.filter(symbol=symbol).count() == ROWS - 450
    in_parts = 4  # the parts listed, `parts`, the JIT check, the abandoned read (`whole` is one)
    assert len(opened) == (0 if connections == 1 else in_parts)
    assert all(second.pgconn_ptr is None for second in opened)  # each closed after its read
