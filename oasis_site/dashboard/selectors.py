"""What the dashboard pages show, read from every app (the site composes them; the apps do not
know the dashboard). Each function returns plain JSON-ready values: the pages render them on
first load and fetch them again as JSON, so a live update and a reload show the same thing.

Prices here are floats for the charts; the exact decimals are in the tables (as strings)
and in the REST API.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
from django.conf import settings
from django.db.models import OuterRef, Subquery
from django.db.models.fields.json import KT
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from audit.alerting import alert_payload
from audit.models import AuditEvent
from audit.selectors import actions_overdue, alerts_recent, incidents_open
from marketdata.core.timeframes import Timeframe
from marketdata.models import Candle, Gap, Symbol
from rules.engine.base import CandleSeries
from rules.engine.evaluator import RuleProgram
from rules.engine.spec import SpecError, parse_spec
from rules.models import RuleConfig, Signal
from trading import selectors as trading_selectors
from trading.killswitch import killswitch_view
from trading.models import BacktestRun, EquitySnapshot, Mode, Order, Position

TIMEFRAMES: tuple[str, ...] = tuple(timeframe.value for timeframe in Timeframe)
# Indicators drawn on the price axis; the others (oscillators) get a panel of their own.
PRICE_KINDS = frozenset({"sma", "ema", "bbands", "vwap"})
CHART_CANDLES = 300
SLO_WINDOW = timedelta(hours=1)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _p95(values: Sequence[float]) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), 95))


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def _decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:f}"


# -- overview ---------------------------------------------------------------------------------


def dashboard_symbols() -> list[Symbol]:
    """The symbols of the configured exchange, trading first, by name."""
    return list(Symbol.objects.filter(exchange=settings.OASIS_EXCHANGE).order_by("status", "symbol"))


def _latest_per_timeframe(
    model: Any, symbols: Iterable[Symbol], **filters: Any
) -> dict[tuple[int, str], Any]:
    """The newest row of `model` per (symbol, timeframe): one query for the ids (a LIMIT 1
    subquery per timeframe, on the (symbol, timeframe, open_time) index), one for the rows."""
    annotations = {
        f"latest_{timeframe}": Subquery(
            model.objects.filter(symbol_id=OuterRef("pk"), timeframe=timeframe, **filters)
            .order_by("-open_time")
            .values("id")[:1]
        )
        for timeframe in TIMEFRAMES
    }
    ids = Symbol.objects.filter(pk__in=[symbol.pk for symbol in symbols]).annotate(**annotations)
    wanted: dict[int, tuple[int, str]] = {}
    for row in ids.values("pk", *annotations):
        for timeframe in TIMEFRAMES:
            row_id = row[f"latest_{timeframe}"]
            if row_id is not None:
                wanted[row_id] = (row["pk"], timeframe)
    return {wanted[row.id]: row for row in model.objects.filter(id__in=list(wanted))}


def heatmap() -> dict[str, Any]:
    """Symbols by timeframes: the last closed candle's return (percent) and the newest signal."""
    symbols = dashboard_symbols()
    candles = _latest_per_timeframe(Candle, symbols, is_closed=True)
    signals = _latest_per_timeframe(Signal, symbols)
    returns: list[list[float | None]] = []
    cells: list[list[dict[str, Any] | None]] = []
    for symbol in symbols:
        row_returns: list[float | None] = []
        row_cells: list[dict[str, Any] | None] = []
        for timeframe in TIMEFRAMES:
            candle = candles.get((symbol.pk, timeframe))
            signal = signals.get((symbol.pk, timeframe))
            if candle is None:
                row_returns.append(None)
                row_cells.append(None)
                continue
            change = float((candle.close - candle.open) / candle.open * 100) if candle.open else 0.0
            row_returns.append(round(change, 4))
            row_cells.append(
                {
                    "open_time": _iso(candle.open_time),
                    "close": _decimal_text(candle.close),
                    "imputed": candle.is_imputed,
                    "signal": None if signal is None else signal.action,
                    "signal_at": None if signal is None else _iso(signal.open_time),
                }
            )
        returns.append(row_returns)
        cells.append(row_cells)
    return {
        "symbols": [symbol.symbol for symbol in symbols],
        "timeframes": list(TIMEFRAMES),
        "returns_pct": returns,
        "cells": cells,
    }


def killswitch_banner() -> dict[str, Any]:
    view = killswitch_view()
    return {
        "state": view.state.value,
        "reason": view.reason,
        "tripwire": view.tripwire,
        "since": _iso(view.since),
        "by": view.changed_by,
    }


def alerts(limit: int = 30) -> list[dict[str, Any]]:
    return [alert_payload(alert) for alert in alerts_recent(limit=limit)]


def signal_latencies_ms(*, since: datetime, limit: int = 5000) -> list[float]:
    """Candle close → signal stored, for signals computed since `since`."""
    # Only candles that closed in the window: signals for older candles (a catch-up after a
    # restart or a backfill) measure the backlog, not the post-close path.
    rows = (
        Signal.objects.filter(computed_at__gte=since, open_time__gte=since - timedelta(hours=4))
        .order_by("-computed_at")
        .values_list("timeframe", "open_time", "computed_at")[:limit]
    )
    return [
        (computed - opened).total_seconds() * 1000 - Timeframe(timeframe).ms
        for timeframe, opened, computed in rows
        if opened + timedelta(milliseconds=Timeframe(timeframe).ms) >= since
    ]


def service_levels(*, now: datetime | None = None) -> dict[str, Any]:
    """The tiles: ingest p95, post-close p95 (the last hour), rejection ratio (today, UTC), open gaps."""
    now = now or timezone.now()
    since = now - SLO_WINDOW
    day_start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    # A negative latency means the exchange's clock is not the wall clock (the simulator runs
    # faster than time in tests and benchmarks): such samples say nothing, so they are left out.
    ingest = [value for value in trading_selectors.ingest_latencies_ms(since=since) if value >= 0]
    post_close = [value for value in signal_latencies_ms(since=since) if value >= 0]
    rejected, orders = trading_selectors.rejection_ratio(Mode.DRY_RUN, since=day_start)
    live_rejected, live_orders = trading_selectors.rejection_ratio(Mode.LIVE, since=day_start)
    rejected, orders = rejected + live_rejected, orders + live_orders
    return {
        "ingest_p95_ms": _p95(ingest),
        "ingest_samples": len(ingest),
        "ingest_target_ms": 300,
        "post_close_p95_ms": _p95(post_close),
        "post_close_samples": len(post_close),
        "post_close_target_ms": 500,
        "rejected_orders": rejected,
        "orders_today": orders,
        "rejection_pct": None if not orders else round(rejected / orders * 100, 3),
        "rejection_target_pct": 0.5,
        "open_gaps": Gap.objects.filter(status__in=[Gap.Status.OPEN, Gap.Status.FAILED]).count(),
    }


def incidents() -> dict[str, Any]:
    today = timezone.now().astimezone(UTC).date()
    return {
        "open": [
            {
                "id": incident.pk,
                "title": incident.title,
                "severity": incident.severity,
                "opened_at": _iso(incident.opened_at),
                "opened_by": incident.opened_by,
                "alerts": incident.alerts.count(),
                "actions": incident.actions.count(),
                "admin": reverse("admin:audit_incident_change", args=[incident.pk]),
            }
            for incident in incidents_open()
        ],
        "overdue_actions": [
            {
                "incident": action.incident_id,
                "description": action.description,
                "owner": action.owner,
                "due_date": action.due_date.isoformat(),
                "admin": reverse("admin:audit_incident_change", args=[action.incident_id]),
            }
            for action in actions_overdue(today=today)
        ],
    }


def overview() -> dict[str, Any]:
    return {
        "incidents": incidents(),
        "heatmap": heatmap(),
        "killswitch": killswitch_banner(),
        "alerts": alerts(),
        "service_levels": service_levels(),
        "as_of": _iso(timezone.now()),
    }


# -- symbol page ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChartRequest:
    symbol: Symbol
    timeframe: Timeframe
    limit: int = CHART_CANDLES


def chart_candles(request: ChartRequest) -> list[Candle]:
    rows = Candle.objects.filter(
        symbol=request.symbol, timeframe=request.timeframe.value, is_closed=True
    ).order_by("-open_time")[: request.limit]
    return list(reversed(rows))


def _indicator_overlays(symbol: Symbol, timeframe: Timeframe, candles: list[Candle]) -> list[dict[str, Any]]:
    """The indicators of the active rules that trade `symbol` on `timeframe`, computed with the
    rule engine's own batch implementation over the candles shown (NaN before warm-up → null)."""
    if not candles:
        return []
    series = CandleSeries.from_columns(
        open_time_ms=[_ms(candle.open_time) for candle in candles],
        high=[float(candle.high) for candle in candles],
        low=[float(candle.low) for candle in candles],
        close=[float(candle.close) for candle in candles],
        volume=[float(candle.volume) for candle in candles],
    )
    overlays: list[dict[str, Any]] = []
    configs = RuleConfig.objects.filter(
        status=RuleConfig.Status.ACTIVE, active_version__isnull=False
    ).select_related("active_version")
    for config in configs.order_by("name"):
        version = config.active_version
        assert version is not None
        if symbol.symbol not in version.symbols:
            continue
        try:
            spec = parse_spec(version.spec)
        except SpecError:
            continue  # an active version validated when it was saved; never break the page
        if timeframe not in spec.timeframes:
            continue
        program = RuleProgram.from_spec(spec, timeframe)
        declarations = spec.indicators_for(timeframe)
        for (_name, declaration), compiled in zip(
            sorted(declarations.items()), program.indicators, strict=True
        ):
            values = compiled.indicator.batch(series)
            columns = (
                [values] if not compiled.fields else [getattr(values, field) for field in compiled.fields]
            )
            for output, column in zip(compiled.outputs, columns, strict=True):
                overlays.append(
                    {
                        "rule": f"{config.name} v{version.number}",
                        "name": output,
                        "kind": declaration.kind,
                        "panel": "price" if declaration.kind in PRICE_KINDS else "oscillator",
                        "values": [
                            None if math.isnan(value) else round(value, 10) for value in column.tolist()
                        ],
                    }
                )
    return overlays


def _candle_json(candle: Candle) -> dict[str, Any]:
    return {
        "t": _ms(candle.open_time),
        "o": float(candle.open),
        "h": float(candle.high),
        "l": float(candle.low),
        "c": float(candle.close),
        "v": float(candle.volume),
        "imputed": candle.is_imputed,
    }


def symbol_chart(request: ChartRequest) -> dict[str, Any]:
    """Candles, overlays, and the signals and orders since the first candle shown."""
    candles = chart_candles(request)
    first = candles[0].open_time if candles else timezone.now()
    signals = Signal.objects.filter(
        symbol=request.symbol, timeframe=request.timeframe.value, open_time__gte=first
    ).select_related("rule_version__config")
    # Orders within the candles shown (and the candle forming after them): an order of another
    # period would stretch the time axis away from the market.
    until = candles[-1].open_time + timedelta(milliseconds=2 * request.timeframe.ms) if candles else first
    orders = Order.objects.filter(
        symbol=request.symbol, created_at__gte=first, created_at__lt=until
    ).order_by("created_at")
    return {
        "symbol": request.symbol.symbol,
        "symbol_id": request.symbol.pk,
        "timeframe": request.timeframe.value,
        "timeframe_ms": request.timeframe.ms,
        "candles": [_candle_json(candle) for candle in candles],
        "overlays": _indicator_overlays(request.symbol, request.timeframe, candles),
        "signals": [
            {
                # Drawn at the close of the candle that produced it: when it could be known.
                "t": _ms(signal.open_time) + request.timeframe.ms,
                "action": signal.action,
                "rule": f"{signal.rule_version.config.name} v{signal.rule_version.number}",
                "close": signal.indicators.get("close") if isinstance(signal.indicators, dict) else None,
            }
            for signal in signals.order_by("open_time")
        ],
        "orders": [
            {
                "t": _ms(order.created_at),
                "side": order.side,
                "status": order.status,
                "mode": order.mode,
                "price": float(order.average_price or order.price or order.reference_price),
                "quantity": _decimal_text(order.quantity),
                "client_order_id": order.client_order_id,
            }
            for order in orders
        ],
    }


# -- trading page -----------------------------------------------------------------------------


def trading_book(*, mode: str, orders_limit: int = 100, equity_points: int = 2000) -> dict[str, Any]:
    orders = (
        Order.objects.filter(mode=mode).select_related("symbol").order_by("-created_at", "-id")[:orders_limit]
    )
    positions = Position.objects.filter(mode=mode).select_related("symbol").order_by("symbol__symbol")
    snapshots = list(
        EquitySnapshot.objects.filter(mode=mode)
        .order_by("-taken_at", "-id")
        .values_list("taken_at", "equity", "realized_pnl", "unrealized_pnl", "drawdown_pct")[:equity_points]
    )
    snapshots.reverse()
    latest = trading_selectors.latest_equity(mode)
    return {
        "mode": mode,
        "orders": [
            {
                "created_at": _iso(order.created_at),
                "symbol": order.symbol.symbol,
                "side": order.side,
                "type": order.type,
                "status": order.status,
                "quantity": _decimal_text(order.quantity),
                "filled_quantity": _decimal_text(order.filled_quantity),
                "price": _decimal_text(order.price),
                "average_price": _decimal_text(order.average_price),
                "reject_reason": order.reject_reason,
                "client_order_id": order.client_order_id,
            }
            for order in orders
        ],
        "positions": [
            {
                "symbol": position.symbol.symbol,
                "quantity": _decimal_text(position.quantity),
                "average_price": _decimal_text(position.average_price),
                "mark_price": _decimal_text(position.mark_price),
                "realized_pnl": _decimal_text(position.realized_pnl),
                "unrealized_pnl": _decimal_text(position.unrealized_pnl),
                "fees": _decimal_text(position.fees),
                "last_trade_at": _iso(position.last_trade_at),
            }
            for position in positions
        ],
        "equity": {
            "t": [_iso(row[0]) for row in snapshots],
            "equity": [float(row[1]) for row in snapshots],
            "pnl": [float(row[2] + row[3]) for row in snapshots],
            "drawdown_pct": [float(row[4]) for row in snapshots],
        },
        "backtests": backtest_runs(),
        "latest": None
        if latest is None
        else {
            "equity": _decimal_text(latest.equity),
            "realized_pnl": _decimal_text(latest.realized_pnl),
            "unrealized_pnl": _decimal_text(latest.unrealized_pnl),
            "drawdown_pct": _decimal_text(latest.drawdown_pct),
            "quote_asset": latest.quote_asset,
            "taken_at": _iso(latest.taken_at),
        },
    }


def backtest_runs(limit: int = 10) -> list[dict[str, Any]]:
    """The newest backtests with a link to their report (their results JSON is not loaded:
    a year's fills and equity curve; only the net PnL is read out of it)."""
    # As text (KT): the exact decimal string stored, on every database.
    recent = BacktestRun.objects.order_by("-created_at", "-id").annotate(net_pnl=KT("results__net_pnl"))
    rows = recent.values(
        "id",
        "status",
        "created_at",
        "parameters",
        "rule_version__number",
        "rule_version__config__name",
        "net_pnl",
    )[:limit]
    return [
        {
            "id": row["id"],
            "rule": f"{row['rule_version__config__name']} v{row['rule_version__number']}",
            "status": row["status"],
            "created_at": _iso(row["created_at"]),
            "symbols": row["parameters"].get("symbols", []),
            "range": f"{row['parameters'].get('since', '')} → {row['parameters'].get('until', '')}",
            "net_pnl": row["net_pnl"],
            "report": reverse("trading:backtest_report", args=[row["id"]]),
        }
        for row in rows
    ]


# -- operations page --------------------------------------------------------------------------


def data_lag(*, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per stored series: how long since its newest closed candle closed (seconds)."""
    now = now or timezone.now()
    symbols = dashboard_symbols()
    candles = _latest_per_timeframe(Candle, symbols, is_closed=True)
    names = {symbol.pk: symbol.symbol for symbol in symbols}
    rows = []
    for (symbol_id, timeframe), candle in sorted(
        candles.items(), key=lambda item: (names[item[0][0]], TIMEFRAMES.index(item[0][1]))
    ):
        length = timedelta(milliseconds=Timeframe(timeframe).ms)
        closed_at = candle.open_time + length
        rows.append(
            {
                "symbol": names[symbol_id],
                "timeframe": timeframe,
                "newest_close": _iso(closed_at),
                "lag_s": round(max(0.0, (now - closed_at).total_seconds()), 1),
                # The next close was due at closed_at + length: past it, the series is late.
                "overdue_s": round(max(0.0, (now - closed_at - length).total_seconds()), 1),
                "source": candle.source,
            }
        )
    return rows


def process_metrics(urls: dict[str, str] | None = None, *, timeout: float = 0.5) -> dict[str, Any]:
    """Buffer lag and WebSocket reconnects as the ingest process exports them (its own
    /metrics: its buffers live in its memory, not in the database)."""
    urls = urls if urls is not None else settings.OASIS_PROCESS_METRICS_URLS
    found: dict[str, Any] = {"reachable": {}, "buffer_lag": [], "ws_reconnects": {}, "frames_rejected": 0.0}
    for process, url in urls.items():
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own processes
                text = response.read().decode()
        except (urllib.error.URLError, OSError, ValueError) as error:
            found["reachable"][process] = f"unreachable: {getattr(error, 'reason', error)}"
            continue
        found["reachable"][process] = "ok"
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "oasis_ingest_buffer_lag_seconds":
                    found["buffer_lag"].append({**sample.labels, "seconds": round(sample.value, 3)})
                elif sample.name == "oasis_ingest_ws_reconnects_total":
                    exchange = sample.labels.get("exchange", "")
                    found["ws_reconnects"][exchange] = found["ws_reconnects"].get(exchange, 0) + sample.value
                elif sample.name == "oasis_ingest_frames_rejected_total":
                    found["frames_rejected"] += sample.value
    return found


def gaps(limit: int = 50) -> list[dict[str, Any]]:
    rows = Gap.objects.select_related("symbol").order_by("-detected_at", "-id")[:limit]
    return [
        {
            "id": gap.pk,
            "symbol": gap.symbol.symbol,
            "timeframe": gap.timeframe,
            "start": _iso(gap.start),
            "end": _iso(gap.end),
            "status": gap.status,
            "attempts": gap.attempts,
            "reason": gap.reason,
            "next_attempt_at": _iso(gap.next_attempt_at),
            "backfilled": gap.candles_backfilled,
            "imputed": gap.candles_imputed,
        }
        for gap in rows
    ]


def backfill_jobs(limit: int = 20) -> list[dict[str, Any]]:
    events = AuditEvent.objects.filter(action="marketdata.backfill").order_by("-seq")[:limit]
    return [
        {
            "at": _iso(event.created_at),
            "actor": event.actor,
            "status": "failed" if event.payload.get("reason") else "done",
            **{
                key: event.payload.get(key)
                for key in (
                    "symbol",
                    "timeframe",
                    "since",
                    "until",
                    "missing",
                    "backfilled",
                    "imputed",
                    "reason",
                )
            },
        }
        for event in events
    ]


def celery_queues() -> dict[str, Any]:
    """Tasks waiting per queue (Redis lists named after the queues), or why there is no figure."""
    if settings.CELERY_TASK_ALWAYS_EAGER or not settings.REDIS_URL:
        return {
            "broker": "none",
            "note": "no broker: tasks run inline in the process that sends them",
            "queues": {},
        }
    import redis

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=0.5)
    try:
        names = sorted(
            name.decode()
            for name in client.scan_iter(match="*", count=500, _type="list")
            if not name.startswith(b"_kombu")
        )
        depths = {name: int(client.llen(name)) for name in names}
    except redis.RedisError as error:
        return {"broker": "redis", "note": f"unreachable: {error}", "queues": {}}
    finally:
        client.close()
    return {"broker": "redis", "note": "", "queues": depths}


def operations() -> dict[str, Any]:
    return {
        "data_lag": data_lag(),
        "processes": process_metrics(),
        "gaps": gaps(),
        "backfill_jobs": backfill_jobs(),
        "celery": celery_queues(),
        "as_of": _iso(timezone.now()),
    }
