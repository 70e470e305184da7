"""Reads for execution: symbol filters, last prices, positions, balances, recent orders."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Max, OuterRef, Prefetch, Q, QuerySet, Subquery

from marketdata.core.timeframes import Timeframe, ms_from_datetime
from marketdata.fields import AsNumber, ExactDecimalField
from marketdata.models import Candle, Symbol
from rules.models import Signal
from trading.core.positions import PositionState
from trading.core.types import KillSwitchState, OrderReport, OrderStatus, OrderType, Side, SymbolFilters
from trading.models import (
    BacktestRun,
    Balance,
    EquitySnapshot,
    Fill,
    KillSwitch,
    Order,
    Position,
    SignalDecision,
)

OPEN_STATUSES = (OrderStatus.NEW, OrderStatus.SUBMITTED, OrderStatus.PARTIALLY_FILLED)


def symbol_filters(symbol: Symbol) -> SymbolFilters:
    """The symbol's filters now, from its row (kept current by symbol sync, with history in
    its filter snapshots). PRICE_FILTER's min/max price and NOTIONAL's max come from the raw
    filter list when the exchange sends them."""
    raw = {item.get("filterType"): item for item in (symbol.filters or []) if isinstance(item, dict)}
    price_filter = raw.get("PRICE_FILTER", {})
    notional = raw.get("NOTIONAL", {})
    return SymbolFilters(
        tick_size=symbol.tick_size,
        step_size=symbol.step_size,
        min_qty=symbol.min_qty,
        max_qty=symbol.max_qty if symbol.max_qty else None,
        min_notional=symbol.min_notional,
        min_price=_decimal(price_filter.get("minPrice")) or Decimal(0),
        max_price=_decimal(price_filter.get("maxPrice")) or None,
        max_notional=_decimal(notional.get("maxNotional")) or None,
    )


def _decimal(value: object) -> Decimal | None:
    if not isinstance(value, str):
        return None
    try:
        number = Decimal(value)
    except ArithmeticError:
        return None
    return number if number.is_finite() else None


def candle_close(symbol_id: int, timeframe: str, open_time: datetime) -> Decimal | None:
    return (
        Candle.objects.filter(symbol_id=symbol_id, timeframe=timeframe, open_time=open_time, is_closed=True)
        .values_list("close", flat=True)
        .first()
    )


@dataclass(frozen=True)
class LastPrice:
    price: Decimal
    close_ms: int  # when the candle it comes from closed


def last_prices(symbol_ids: Iterable[int], *, as_of: datetime | None = None) -> dict[int, LastPrice]:
    """The close of each symbol's newest closed 1m candle (that is over at `as_of`, when given:
    a replay on stored candles must not see later ones): one query, one index lookup per symbol
    (the symbols drive it; their candles are never scanned)."""
    ids = list(symbol_ids)
    if not ids:
        return {}
    newest = Candle.objects.filter(symbol_id=OuterRef("pk"), timeframe=Timeframe.M1.value, is_closed=True)
    if as_of is not None:
        newest = newest.filter(open_time__lte=as_of - timedelta(minutes=1))
    newest = newest.order_by("-open_time")[:1]
    rows = (
        Symbol.objects.filter(pk__in=ids)
        .annotate(
            last_open=Subquery(newest.values("open_time")),
            last_close=Subquery(newest.values("close"), output_field=ExactDecimalField()),
        )
        .values_list("pk", "last_open", "last_close")
    )
    return {
        symbol_id: LastPrice(close, ms_from_datetime(open_time) + Timeframe.M1.ms)
        for symbol_id, open_time, close in rows
        if open_time is not None
    }


def newest_candle_closes_ms(symbol_ids: Iterable[int]) -> dict[str, int | None]:
    """When each symbol's newest closed 1m candle closed, by symbol name (None: no candle at
    all). One index probe a symbol (backwards on symbol, timeframe, open time), not a scan of
    their candles."""
    newest = Candle.objects.filter(
        symbol=OuterRef("pk"), timeframe=Timeframe.M1.value, is_closed=True
    ).order_by("-open_time")
    rows = Symbol.objects.filter(id__in=list(symbol_ids)).annotate(
        newest=Subquery(newest.values("open_time")[:1])
    )
    return {
        name: None if open_time is None else ms_from_datetime(open_time) + Timeframe.M1.ms
        for name, open_time in rows.values_list("symbol", "newest")
    }


def ingest_latencies_ms(*, since: datetime, limit: int = 5000) -> list[float]:
    """Close → stored, for streamed 1m candles that closed since `since` (a wall-clock view of
    WS → persisted, which the kill switch watches)."""
    rows = (
        Candle.objects.filter(
            timeframe=Timeframe.M1.value, source=Candle.Source.WS, open_time__gte=since - timedelta(minutes=1)
        )
        .order_by("-open_time")
        .values_list("open_time", "ingested_at")[:limit]
    )
    return [
        (ingested - opened).total_seconds() * 1000 - Timeframe.M1.ms for opened, ingested in rows if ingested
    ]


def order_latencies_ms(*, mode: str, since: datetime) -> list[float]:
    rows = Order.objects.filter(
        mode=mode, submitted_at__gte=since, acknowledged_at__isnull=False
    ).values_list("submitted_at", "acknowledged_at")
    return [(ack - sent).total_seconds() * 1000 for sent, ack in rows if sent and ack]


def position_of(mode: str, *, symbol_id: int) -> Position | None:
    return Position.objects.filter(mode=mode, symbol_id=symbol_id).first()


def position_state(position: Position | None) -> PositionState:
    if position is None:
        return PositionState()
    return PositionState(
        quantity=position.quantity,
        cost=position.cost,
        realized_pnl=position.realized_pnl,
        fees=position.fees,
    )


def positions(mode: str, *, held_only: bool = False) -> dict[int, Position]:
    """The mode's positions by symbol id; `held_only`: those with a quantity."""
    rows = Position.objects.filter(mode=mode)
    if held_only:
        rows = rows.alias(held=AsNumber("quantity")).filter(held__gt=0)
    return {p.symbol_id: p for p in rows}


def last_trade_times(
    mode: str, *, symbol_id: int
) -> tuple[datetime | None, datetime | None, datetime | None]:
    """(last trade of any symbol, last losing trade, last trade of `symbol_id`): flat positions
    included, as cooldowns run on after a position is closed. One query."""
    times = Position.objects.filter(mode=mode).aggregate(
        trade=Max("last_trade_at"),
        loss=Max("last_loss_at"),
        symbol=Max("last_trade_at", filter=Q(symbol_id=symbol_id)),
    )
    return times["trade"], times["loss"], times["symbol"]


def balances(mode: str) -> dict[str, Balance]:
    return {b.asset: b for b in Balance.objects.filter(mode=mode)}


def killswitch_state() -> KillSwitchState:
    state = KillSwitch.objects.filter(pk=1).values_list("state", flat=True).first()
    return KillSwitchState(state) if state else KillSwitchState.ACTIVE


def open_order_sides(mode: str, *, symbol_id: int) -> set[Side]:
    """The sides of the symbol's orders still open (waiting for a fill or an answer)."""
    rows = Order.objects.filter(mode=mode, symbol_id=symbol_id, status__in=OPEN_STATUSES)
    return {Side(side) for side in rows.values_list("side", flat=True).distinct()}


def open_orders(mode: str) -> list[Order]:
    return list(
        Order.objects.filter(mode=mode, status__in=OPEN_STATUSES).select_related("symbol").order_by("id")
    )


def recent_order_times(mode: str, *, since: datetime) -> list[tuple[int, int]]:
    """(symbol id, ms) of every order that left (or tried to) since `since`."""
    rows = Order.objects.filter(mode=mode, submitted_at__gte=since).values_list("symbol_id", "submitted_at")
    return [(symbol_id, ms_from_datetime(at)) for symbol_id, at in rows if at is not None]


def undecided_signals(*, since: datetime, limit: int) -> list[Signal]:
    """Signals computed since `since` that the execution loop has not decided on, oldest first."""
    return list(
        Signal.objects.filter(computed_at__gte=since, decision__isnull=True)
        .select_related("symbol", "rule_version")
        .order_by("id")[:limit]
    )


def latest_equity(mode: str) -> EquitySnapshot | None:
    return EquitySnapshot.objects.filter(mode=mode).order_by("-taken_at", "-id").first()


def peak_equity_since(mode: str, *, since: datetime) -> Decimal | None:
    """The highest equity snapshotted at or after `since`, exactly as stored (None: none since)."""
    return (
        EquitySnapshot.objects.filter(mode=mode, taken_at__gte=since)
        .order_by(AsNumber("equity").desc(), "-taken_at")
        .values_list("equity", flat=True)
        .first()
    )


def rejection_ratio(mode: str, *, since: datetime) -> tuple[int, int]:
    """(rejected, all) orders created since `since`."""
    orders = Order.objects.filter(mode=mode, created_at__gte=since)
    return orders.filter(status=OrderStatus.REJECTED).count(), orders.count()


def order_as_report(order: Order) -> OrderReport:
    """An order row as a broker would report it (a `new` row that was sent reads as submitted)."""
    return OrderReport(
        client_order_id=order.client_order_id,
        exchange_order_id=order.exchange_order_id or None,
        symbol=order.symbol.symbol,
        side=Side(order.side),
        type=OrderType(order.type),
        status=OrderStatus(order.status) if order.status != OrderStatus.NEW else OrderStatus.SUBMITTED,
        quantity=order.quantity,
        price=order.price,
        filled_quantity=order.filled_quantity,
        average_price=order.average_price,
        updated_ms=ms_from_datetime(order.updated_at),
    )


def orders_list(
    *,
    mode: str | None = None,
    status: str | None = None,
    symbol_id: int | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> QuerySet[Order]:
    """Orders with their symbols and rule versions, filtered by any of: mode, status, symbol and
    creation time (start … end, included)."""
    rows = Order.objects.select_related("symbol", "rule_version__config")
    if mode:
        rows = rows.filter(mode=mode)
    if status:
        rows = rows.filter(status=status)
    if symbol_id is not None:
        rows = rows.filter(symbol_id=symbol_id)
    if start is not None:
        rows = rows.filter(created_at__gte=start)
    if end is not None:
        rows = rows.filter(created_at__lte=end)
    return rows


def order_get(*, order_id: int) -> Order | None:
    """One order with its symbol, rule version and fills (oldest first)."""
    return (
        Order.objects.select_related("symbol", "rule_version__config")
        .prefetch_related(Prefetch("fills", queryset=Fill.objects.order_by("executed_at", "id")))
        .filter(pk=order_id)
        .first()
    )


def positions_list(*, mode: str | None = None, open_only: bool = False) -> QuerySet[Position]:
    """Positions with their symbols; `open_only`: those holding a quantity."""
    rows = Position.objects.select_related("symbol")
    if mode:
        rows = rows.filter(mode=mode)
    if open_only:
        rows = rows.exclude(quantity=0)
    return rows


def backtests_list(*, status: str | None = None, rule_id: int | None = None) -> QuerySet[BacktestRun]:
    """Backtest runs with their rule versions, without their results (the detail has them)."""
    rows = BacktestRun.objects.select_related("rule_version__config").defer("results")
    if status:
        rows = rows.filter(status=status)
    if rule_id is not None:
        rows = rows.filter(rule_version__config_id=rule_id)
    return rows


def backtest_get(*, run_id: int) -> BacktestRun | None:
    return BacktestRun.objects.select_related("rule_version__config").filter(pk=run_id).first()


def decisions_list(*, mode: str | None = None, outcome: str | None = None) -> QuerySet[SignalDecision]:
    """What the execution loop decided for each signal (an order, or a skip with its reason)."""
    rows = SignalDecision.objects.select_related("signal__symbol", "signal__order")
    if mode:
        rows = rows.filter(mode=mode)
    if outcome:
        rows = rows.filter(outcome=outcome)
    return rows
