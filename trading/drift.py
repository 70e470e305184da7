"""Drift: a dry-run period replayed by the backtester, compared decision by decision with what
dry-run recorded.

The replay recomputes each rule version's signals from the stored candles (as the live evaluator
computes them) and runs the backtest engine from the book dry-run held when the period began
(positions, balances and open orders rebuilt from its own fills). Then, one by one:
- signals (symbol, timeframe, candle, action) against the stored signals;
- orders by client order id (side, quantity, status, reject reason) against the order rows;
- fills (price, quantity, fee, time) against the fill rows;
and the realized PnL of the period per symbol, whose divergence is given in basis points of the
notional traded. Each mismatch names its symbol, timeframe, time and what differed. Figures go
to Prometheus gauges; a divergence over the rule version's tolerance is logged as an alert and
audited.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog
from django.conf import settings as django_settings
from prometheus_client import Gauge

from audit.services import audit_record
from marketdata.core.timeframes import Timeframe, ms_from_datetime, utc_from_ms
from marketdata.models import Candle, Symbol
from rules.engine.spec import DriftTolerance, parse_spec
from rules.models import Signal
from trading.backtests import BacktestInputError, signal_events
from trading.core import backtest
from trading.core.positions import PositionState, apply_fill
from trading.core.types import ExecutedFill, OrderStatus, Side
from trading.execution import limits_of
from trading.models import Fill, Mode, Order
from trading.runner import fill_model
from trading.selectors import symbol_filters

logger = structlog.get_logger(__name__)

DRIFT_MISMATCHES = Gauge(
    "oasis_drift_mismatches",
    "Backtest vs dry-run mismatches in the last drift check, by kind.",
    ["symbol", "timeframe", "kind"],
)
DRIFT_PNL_BPS = Gauge(
    "oasis_drift_pnl_bps",
    "Realized PnL divergence, backtest vs dry-run, in bps of notional traded.",
    ["symbol"],
)
DRIFT_OVER_TOLERANCE = Gauge(
    "oasis_drift_over_tolerance", "1 when the last drift check was over a rule version's tolerance."
)


@dataclass(frozen=True)
class Mismatch:
    kind: str  # "signal" | "order" | "fill"
    symbol: str
    timeframe: str
    time: str  # ISO, UTC: the candle's open time (signals) or the order's placement
    detail: str
    # A fill that differs only in price (and the fee on it) by no more than the rule version's
    # `drift_tolerance.price_pct`: reported and counted, but not over tolerance.
    within_tolerance: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "time": self.time,
            "detail": self.detail,
            "within_tolerance": self.within_tolerance,
        }


@dataclass
class DriftReport:
    since: datetime
    until: datetime
    versions: list[str]
    signals_compared: int = 0
    orders_compared: int = 0
    fills_compared: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    pnl_bps: dict[str, float] = field(default_factory=dict)
    over_tolerance: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "versions": self.versions,
            "signals_compared": self.signals_compared,
            "orders_compared": self.orders_compared,
            "fills_compared": self.fills_compared,
            "mismatches": [m.to_json() for m in self.mismatches],
            "pnl_bps": self.pnl_bps,
            "over_tolerance": self.over_tolerance,
        }


def drift_check(*, since: datetime, until: datetime, exchange: str | None = None) -> DriftReport:
    if since.tzinfo is None or until.tzinfo is None or since >= until:
        raise BacktestInputError("drift needs --since before --until, both with a time zone")
    exchange = exchange or django_settings.OASIS_EXCHANGE
    recorded = list(
        Signal.objects.filter(
            open_time__gte=since, open_time__lt=until, symbol__exchange=exchange
        ).select_related("symbol", "rule_version__config")
    )
    versions = {s.rule_version_id: s.rule_version for s in recorded}
    report = DriftReport(since, until, [f"{v.config.name} v{v.number}" for v in versions.values()])
    if not versions:
        return _publish(report, {})
    since_ms, until_ms = ms_from_datetime(since), ms_from_datetime(until)
    symbols = {s.symbol.symbol: s.symbol for s in recorded}
    events: list[backtest.SignalEvent] = []
    for version in versions.values():
        spec = parse_spec(version.spec)
        names = {s.symbol.symbol for s in recorded if s.rule_version_id == version.pk} | set(version.symbols)
        for symbol in Symbol.objects.filter(exchange=exchange, symbol__in=names):
            symbols[symbol.symbol] = symbol
            for timeframe in spec.timeframes:
                events.extend(
                    signal_events(
                        spec=spec,
                        rule_version=version.pk,
                        symbol=symbol,
                        timeframe=timeframe,
                        since_ms=since_ms,
                        until_ms=until_ms,
                    )
                )
    _compare_candles(report, recorded)
    _compare_signals(report, events, recorded)

    orders = list(
        Order.objects.filter(mode=Mode.DRY_RUN, exchange=exchange).select_related("symbol").order_by("id")
    )
    fills = list(
        Fill.objects.filter(order__in=orders).select_related("order__symbol").order_by("executed_at", "id")
    )
    initial = _book_at(since_ms, orders, fills)
    markets = {
        name: backtest.MarketSymbol(
            symbol=name,
            base=symbol.base,
            quote=symbol.quote,
            filters=symbol_filters(symbol),
            minutes=[
                backtest.Minute(ms_from_datetime(t), o, h, low, c)
                for t, o, h, low, c in Candle.objects.filter(
                    symbol=symbol,
                    timeframe=Timeframe.M1.value,
                    open_time__gte=utc_from_ms(since_ms - 3_600_000),
                )
                .filter(open_time__lt=until)
                .order_by("open_time")
                .values_list("open_time", "open", "high", "low", "close")
            ],
            trading=symbol.status == Symbol.Status.TRADING,
        )
        for name, symbol in symbols.items()
    }
    first = next(iter(versions.values()))
    first_spec = parse_spec(first.spec)
    terms = {
        v.pk: backtest.RuleTerms(limits_of(spec), spec.sizing.quote_amount, spec.sizing.equity_pct)
        for v, spec in ((v, parse_spec(v.spec)) for v in versions.values())
    }
    settings = backtest.BacktestSettings(
        exchange=exchange,
        limits=limits_of(first_spec),
        sizing_quote=first_spec.sizing.quote_amount,
        sizing_equity_pct=first_spec.sizing.equity_pct,
        fill_model=fill_model(),
        opening_balance=Decimal(0),
        quote_asset=django_settings.OASIS_QUOTE_ASSET,
        stop_loss_pct=first_spec.stop_loss_pct,
        take_profit_pct=first_spec.take_profit_pct,
        terms=terms,
    )
    result = backtest.run(events, symbols=markets, settings=settings, initial=initial)
    in_period = [o for o in orders if since_ms <= ms_from_datetime(o.created_at) < until_ms]
    tolerance = {v.pk: parse_spec(v.spec).drift_tolerance for v in versions.values()}
    _compare_orders(
        report, result, in_period, fills, since_ms=since_ms, until_ms=until_ms, tolerance=tolerance
    )
    return _publish(report, tolerance)


_FIELDS = ("open", "high", "low", "close", "volume")


def _compare_candles(report: DriftReport, recorded: list[Signal]) -> None:
    """Each stored signal kept the candle it was decided on (`Signal.indicators`): a stored
    candle that no longer says the same was edited since, and is named."""
    wanted: dict[tuple[int, str], set[datetime]] = defaultdict(set)
    for signal in recorded:
        wanted[(signal.symbol_id, signal.timeframe)].add(signal.open_time)
    stored: dict[tuple[int, str, datetime], tuple[Decimal, ...]] = {}
    for (symbol_id, timeframe), times in wanted.items():
        rows = Candle.objects.filter(
            symbol_id=symbol_id, timeframe=timeframe, open_time__in=times
        ).values_list("open_time", *_FIELDS)
        for open_time, *values in rows:
            stored[(symbol_id, timeframe, open_time)] = tuple(values)
    for signal in recorded:
        now = stored.get((signal.symbol_id, signal.timeframe, signal.open_time))
        seen = signal.indicators or {}
        if now is None:
            differences = ["the candle is gone"]
        else:
            # The evaluator saw floats of the stored decimals: the same conversion compares exactly.
            differences = [
                f"{name} was {seen[name]} when dry-run decided, {float(value)} now"
                for name, value in zip(_FIELDS, now, strict=True)
                if name in seen and seen[name] is not None and float(value) != seen[name]
            ]
        if differences:
            report.mismatches.append(
                Mismatch(
                    "candle",
                    signal.symbol.symbol,
                    signal.timeframe,
                    signal.open_time.isoformat(),
                    "; ".join(differences),
                )
            )


def _compare_signals(report: DriftReport, events: list[backtest.SignalEvent], recorded: list[Signal]) -> None:
    replayed = {
        (e.symbol, e.timeframe, e.close_ms - e.timeframe_ms, e.rule_version): e.action for e in events
    }
    stored = {
        (s.symbol.symbol, s.timeframe, ms_from_datetime(s.open_time), s.rule_version_id): s.action
        for s in recorded
    }
    report.signals_compared = len(set(replayed) | set(stored))
    for key in sorted(set(replayed) | set(stored)):
        symbol, timeframe, open_ms, _ = key
        ours, theirs = replayed.get(key), stored.get(key)
        if ours != theirs:
            report.mismatches.append(
                Mismatch(
                    "signal",
                    symbol,
                    timeframe,
                    utc_from_ms(open_ms).isoformat(),
                    f"backtest {ours or 'no signal'}, dry-run {theirs or 'no signal'}",
                )
            )


def _book_at(since_ms: int, orders: list[Order], fills: list[Fill]) -> backtest.InitialBook:
    """Dry-run's book when the period began, rebuilt from its own fills: balances are today's
    minus what the fills since then changed; positions replay the fills before."""
    from trading.models import Balance

    balances = {b.asset: b.free for b in Balance.objects.filter(mode=Mode.DRY_RUN)}
    positions: dict[str, PositionState] = {}
    last_trade: dict[str, int] = {}
    last_loss: dict[str, int] = {}
    for fill in fills:
        order, symbol = fill.order, fill.order.symbol
        time_ms = ms_from_datetime(fill.executed_at)
        side = Side(order.side)
        if time_ms >= since_ms:
            sign = -1 if side is Side.BUY else 1
            balances[symbol.quote] = (
                balances.get(symbol.quote, Decimal(0)) - sign * fill.price * fill.quantity
            )
            balances[symbol.base] = balances.get(symbol.base, Decimal(0)) + sign * fill.quantity
            balances[fill.fee_asset] = balances.get(fill.fee_asset, Decimal(0)) + fill.fee
            continue
        state = positions.get(symbol.symbol, PositionState())
        executed = ExecutedFill(fill.trade_id, fill.price, fill.quantity, fill.fee, fill.fee_asset, time_ms)
        after = apply_fill(state, side, executed, quote_asset=symbol.quote)
        positions[symbol.symbol] = after
        last_trade[symbol.symbol] = time_ms
        if after.realized_pnl < state.realized_pnl:
            last_loss[symbol.symbol] = time_ms
    filled_before = {f.order_id for f in fills if ms_from_datetime(f.executed_at) < since_ms}
    still_open = [
        backtest.SimOrder(
            o.client_order_id,
            o.symbol.symbol,
            Side(o.side),
            o.quantity,
            o.requested_quantity,
            o.reference_price,
            ms_from_datetime(o.submitted_at),
            OrderStatus.SUBMITTED,
        )
        for o in orders
        if o.submitted_at is not None
        and ms_from_datetime(o.submitted_at) < since_ms
        and o.pk not in filled_before
        and o.status != OrderStatus.REJECTED
    ]
    return backtest.InitialBook(positions, balances, last_trade, last_loss, still_open)


def _compare_orders(
    report: DriftReport,
    result: backtest.BacktestResult,
    orders: list[Order],
    fills: list[Fill],
    *,
    since_ms: int,
    until_ms: int,
    tolerance: dict[int, DriftTolerance],
) -> None:
    strictest_price_pct = min((t.price_pct for t in tolerance.values()), default=Decimal(0))
    ours = {o.client_order_id: o for o in result.orders if since_ms <= o.placed_ms < until_ms}
    theirs = {o.client_order_id: o for o in orders}
    # A dry-run fill after the period is not part of it: the replay's candles end there too.
    their_fills = {f.order.client_order_id: f for f in fills if ms_from_datetime(f.executed_at) < until_ms}
    report.orders_compared = len(set(ours) | set(theirs))
    pnl: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0), Decimal(0), Decimal(0)])
    for cid in sorted(set(ours) | set(theirs)):
        mine, recorded = ours.get(cid), theirs.get(cid)
        timeframe = (mine.signal.timeframe if mine and mine.signal else "") or (
            recorded.signal.timeframe if recorded and recorded.signal_id and recorded.signal else ""
        )
        symbol = mine.symbol if mine else recorded.symbol.symbol if recorded else ""
        at = (
            utc_from_ms(mine.placed_ms).isoformat()
            if mine
            else recorded.created_at.isoformat()
            if recorded
            else ""
        )
        if mine is None or recorded is None:
            where = "dry-run only" if mine is None else "backtest only"
            report.mismatches.append(Mismatch("order", symbol, timeframe, at, f"order {cid}: {where}"))
            continue
        a = (
            mine.side.value,
            mine.quantity,
            mine.status.value if mine.fill is None else "filled",
            mine.reject_reason,
        )
        status = recorded.status
        if status == OrderStatus.FILLED and cid not in their_fills:
            status = OrderStatus.SUBMITTED  # filled after the period
        b = (recorded.side, recorded.quantity, status, recorded.reject_reason)
        if a != b:
            report.mismatches.append(
                Mismatch("order", symbol, timeframe, at, f"order {cid}: backtest {a}, dry-run {b}")
            )
        fill = their_fills.get(cid)
        if mine.fill is not None or fill is not None:
            report.fills_compared += 1
            x = (mine.fill.price, mine.fill.quantity, mine.fill.fee, mine.fill.time_ms) if mine.fill else None
            y = (fill.price, fill.quantity, fill.fee, ms_from_datetime(fill.executed_at)) if fill else None
            if x != y:
                rule = tolerance.get(mine.signal.rule_version) if mine.signal else None
                limit = rule.price_pct if rule is not None else strictest_price_pct
                report.mismatches.append(
                    Mismatch(
                        "fill",
                        symbol,
                        timeframe,
                        at,
                        f"fill of {cid}: backtest {x}, dry-run {y}",
                        within_tolerance=_price_only_within(x, y, limit),
                    )
                )
        for index, filled in ((0, mine.fill), (2, fill)):
            if filled is None:
                continue
            notional = filled.price * filled.quantity
            pnl[symbol][index] += (notional if mine.side is Side.SELL else -notional) - filled.fee
            pnl[symbol][index + 1] += notional
    for symbol, (ours_pnl, ours_notional, theirs_pnl, theirs_notional) in pnl.items():
        traded = max(ours_notional, theirs_notional)
        report.pnl_bps[symbol] = float((ours_pnl - theirs_pnl) / traded * 10_000) if traded else 0.0


def _price_only_within(
    ours: tuple[Decimal, Decimal, Decimal, int] | None,
    theirs: tuple[Decimal, Decimal, Decimal, int] | None,
    limit_pct: Decimal,
) -> bool:
    """Whether two fills differ only in price (and so in fee), by at most `limit_pct` percent of
    dry-run's price."""
    if ours is None or theirs is None or ours[1] != theirs[1] or ours[3] != theirs[3] or theirs[0] <= 0:
        return False
    return abs(ours[0] - theirs[0]) / theirs[0] * 100 <= limit_pct


def _publish(report: DriftReport, tolerance: dict[int, DriftTolerance]) -> DriftReport:
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    for mismatch in report.mismatches:
        counts[(mismatch.symbol, mismatch.timeframe, mismatch.kind)] += 1
    DRIFT_MISMATCHES.clear()
    for (symbol, timeframe, kind), count in counts.items():
        DRIFT_MISMATCHES.labels(symbol=symbol, timeframe=timeframe, kind=kind).set(count)
    DRIFT_PNL_BPS.clear()
    for symbol, bps in report.pnl_bps.items():
        DRIFT_PNL_BPS.labels(symbol=symbol).set(bps)
    pnl_limit_bps = min((float(t.pnl_pct) * 100 for t in tolerance.values()), default=None)
    report.over_tolerance = any(not m.within_tolerance for m in report.mismatches) or (
        pnl_limit_bps is not None and any(abs(bps) > pnl_limit_bps for bps in report.pnl_bps.values())
    )
    DRIFT_OVER_TOLERANCE.set(1 if report.over_tolerance else 0)
    if report.over_tolerance:
        logger.error("drift_over_tolerance", mismatches=len(report.mismatches), pnl_bps=report.pnl_bps)
    audit_record(
        actor="system:drift",
        action="trading.drift",
        payload={k: v for k, v in report.to_json().items() if k != "mismatches"}
        | {
            "mismatch_count": len(report.mismatches),
            "mismatch_counts": [
                {"symbol": symbol, "timeframe": timeframe, "kind": kind, "count": count}
                for (symbol, timeframe, kind), count in sorted(counts.items())
            ],
            "first_mismatches": [m.to_json() for m in report.mismatches[:20]],
        },
    )
    return report
