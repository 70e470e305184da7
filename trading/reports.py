"""The backtest report: one plotly figure — candlesticks with the run's entries and exits, the
equity curve, the drawdown — built from a stored `BacktestRun` and its candles."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from marketdata.core.timeframes import Timeframe
from marketdata.models import Candle, Symbol
from trading.models import BacktestRun

MAX_CANDLES = 3_000  # more would make the page slow to draw; a coarser timeframe is chosen
_CHART_TIMEFRAMES = (Timeframe.M1, Timeframe.M5, Timeframe.M15, Timeframe.H1, Timeframe.H4)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def chart_timeframe(symbol: Symbol, since: datetime, until: datetime) -> Timeframe:
    """The finest stored timeframe that draws the range in at most MAX_CANDLES candles."""
    for timeframe in _CHART_TIMEFRAMES:
        if (until - since).total_seconds() * 1000 / timeframe.ms <= MAX_CANDLES:
            return timeframe
    return _CHART_TIMEFRAMES[-1]


def backtest_figure(run: BacktestRun, *, symbol_name: str | None = None) -> dict[str, Any]:
    """The figure as plotly JSON (`{"data": [...], "layout": {...}}`)."""
    parameters = run.parameters
    symbol_name = symbol_name or parameters["symbols"][0]
    symbol = Symbol.objects.get(exchange=parameters["exchange"], symbol=symbol_name)
    since = datetime.fromisoformat(parameters["since"])
    until = datetime.fromisoformat(parameters["until"])
    timeframe = chart_timeframe(symbol, since, until)
    rows = list(
        Candle.objects.filter(
            symbol=symbol, timeframe=timeframe.value, open_time__gte=since, open_time__lt=until
        )
        .order_by("open_time")
        .values_list("open_time", "open", "high", "low", "close")
    )
    figure = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        row_heights=[0.6, 0.25, 0.15],
        vertical_spacing=0.03,
        subplot_titles=(f"{symbol_name} {timeframe.value}", "Equity", "Drawdown %"),
    )
    # Floats from here on: a chart, not an account.
    figure.add_trace(
        go.Candlestick(
            x=[r[0] for r in rows],
            open=[float(r[1]) for r in rows],
            high=[float(r[2]) for r in rows],
            low=[float(r[3]) for r in rows],
            close=[float(r[4]) for r in rows],
            name=symbol_name,
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    results = run.results or {}
    fills = [f for f in results.get("fills", []) if f["symbol"] == symbol_name]
    for side, marker, colour in (("buy", "triangle-up", "#2e7d32"), ("sell", "triangle-down", "#c62828")):
        chosen = [f for f in fills if f["side"] == side]
        figure.add_trace(
            go.Scatter(
                x=[_utc(f["time_ms"]) for f in chosen],
                y=[float(f["price"]) for f in chosen],
                mode="markers",
                marker={"symbol": marker, "size": 10, "color": colour},
                name="entries" if side == "buy" else "exits",
                text=[f"{f['side']} {f['quantity']} @ {f['price']} ({f['reason']})" for f in chosen],
                hoverinfo="text+x",
            ),
            row=1,
            col=1,
        )
    curve = results.get("equity_curve", {"times_ms": [], "equity": [], "drawdown_pct": []})
    times = [_utc(ms) for ms in curve["times_ms"]]
    figure.add_trace(go.Scatter(x=times, y=curve["equity"], name="equity", mode="lines"), row=2, col=1)
    figure.add_trace(
        go.Scatter(x=times, y=curve["drawdown_pct"], name="drawdown", mode="lines", fill="tozeroy"),
        row=3,
        col=1,
    )
    figure.update_layout(
        height=900,
        xaxis_rangeslider_visible=False,
        margin={"l": 50, "r": 20, "t": 40, "b": 30},
        legend={"orientation": "h"},
    )
    document: dict[str, Any] = figure.to_plotly_json()
    return document
