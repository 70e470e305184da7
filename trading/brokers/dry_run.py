"""The dry-run broker: orders fill by the fill model (trading.core.fills) against our own
candles, in a paper account kept in the database. Nothing leaves the process.

Its "exchange" is the order rows themselves. An order is matched against the closed 1m candles
that open at or after the minute it was placed in (see trading.core.fills: a signal on candle t
fills at t+1 or later), once they are over by the broker's clock; until then it waits, and
`resting_fills`, which the execution loop calls every cycle, fills it. A replay over stored
candles therefore sees each fill exactly when live dry-run did. A market order that finds no candle within
`MARKET_WAIT` expires (no market data to fill at)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from decimal import Decimal

from marketdata.core.timeframes import Timeframe, ms_from_datetime, utc_from_ms
from marketdata.models import Candle, Symbol
from trading.brokers.base import OrderRefused
from trading.core.fills import FillModel
from trading.core.types import (
    BalanceLine,
    ExecutedFill,
    OrderIntent,
    OrderReport,
    OrderStatus,
    OrderType,
    Side,
)
from trading.models import Balance, Fill, Mode, Order
from trading.selectors import OPEN_STATUSES, order_as_report

# How long a dry-run market order waits for the candle to fill at before it expires.
MARKET_WAIT_MS = 10 * 60_000


class DryRunBroker:
    mode = Mode.DRY_RUN.value

    def __init__(
        self, *, exchange: str, fill_model: FillModel, clock_ms: Callable[[], int] | None = None
    ) -> None:
        self.exchange = exchange
        self.fill_model = fill_model
        self._symbols: dict[str, Symbol] = {}
        self._clock: Callable[[], int] = clock_ms or (lambda: int(time.time() * 1000))

    def _symbol(self, name: str) -> Symbol:
        if name not in self._symbols:
            symbol = Symbol.objects.filter(exchange=self.exchange, symbol=name).first()
            if symbol is None:
                raise OrderRefused(f"unknown symbol {name} on {self.exchange}", reason="unknown_symbol")
            self._symbols[name] = symbol
        return self._symbols[name]

    def prepare(self) -> None:
        """Nothing to load: the paper account and the candles are in the database."""

    def submit(self, intent: OrderIntent) -> OrderReport:
        symbol = self._symbol(intent.symbol)
        now = self._clock()
        fill = self._match(intent, symbol, placed_ms=now)
        return _report(intent, fill=fill, updated_ms=fill.time_ms if fill else now)

    def resting_fills(self) -> list[tuple[Order, OrderReport]]:
        """Open dry-run orders that a candle has now filled, and market orders that waited too
        long for one (expired)."""
        found = []
        waiting = Order.objects.filter(
            mode=self.mode, status__in=OPEN_STATUSES, exchange=self.exchange, submitted_at__isnull=False
        ).select_related("symbol")
        now = self._clock()
        for order in waiting:
            assert order.submitted_at is not None
            placed_ms = ms_from_datetime(order.submitted_at)
            intent = _intent_of(order)
            fill = self._match(intent, order.symbol, placed_ms=placed_ms)
            if fill is not None:
                found.append((order, _report(intent, fill=fill, updated_ms=fill.time_ms)))
            elif intent.type is OrderType.MARKET and now - placed_ms > MARKET_WAIT_MS:
                expired = replace(
                    _report(intent, fill=None, updated_ms=now),
                    status=OrderStatus.EXPIRED,
                    reject_reason=f"no 1m candle to fill at within {MARKET_WAIT_MS // 60_000} minutes",
                )
                found.append((order, expired))
        return found

    def _match(self, intent: OrderIntent, symbol: Symbol, *, placed_ms: int) -> ExecutedFill | None:
        """The fill on the first stored 1m candle, opening at or after the minute the order was
        placed in and closed by now (the broker's clock), that fills it (market: the first
        one). "Closed by now" makes a replay over stored candles see a fill when live trading
        would have: once its candle is over, not the moment the order is placed."""
        first_open = utc_from_ms(placed_ms - placed_ms % Timeframe.M1.ms)
        closed_by = utc_from_ms(self._clock() - Timeframe.M1.ms)
        candles = (
            Candle.objects.filter(
                symbol_id=symbol.pk,
                timeframe=Timeframe.M1.value,
                is_closed=True,
                open_time__gte=first_open,
                open_time__lte=closed_by,
            )
            .order_by("open_time")
            .values_list("open_time", "open", "high", "low")
        )
        for open_time, open_price, high, low in candles.iterator():
            fill = self.fill_model.on_candle(
                intent,
                open_price=open_price,
                high=high,
                low=low,
                open_ms=ms_from_datetime(open_time),
                tick=symbol.tick_size,
                quote_asset=symbol.quote,
            )
            if fill is not None:
                return fill
        return None

    def fetch_order(self, symbol: str, client_order_id: str) -> OrderReport | None:
        order = Order.objects.filter(mode=self.mode, client_order_id=client_order_id).first()
        if order is None or order.submitted_at is None:
            return None
        return order_as_report(order)

    def cancel(self, symbol: str, client_order_id: str) -> OrderReport:
        order = Order.objects.filter(mode=self.mode, client_order_id=client_order_id).first()
        if order is None or order.status not in OPEN_STATUSES:
            raise OrderRefused(f"unknown or closed order {client_order_id}", reason="unknown_order")
        return replace(order_as_report(order), status=OrderStatus.CANCELED, updated_ms=self._clock())

    def open_orders(self, symbols: Iterable[str]) -> list[OrderReport]:
        names = set(symbols)
        rows = Order.objects.filter(mode=self.mode, status__in=OPEN_STATUSES).select_related("symbol")
        return [order_as_report(order) for order in rows if not names or order.symbol.symbol in names]

    def fills(self, symbol: str, *, since_ms: int) -> list[tuple[str, ExecutedFill]]:
        rows = Fill.objects.filter(
            order__mode=self.mode, order__symbol__symbol=symbol, order__exchange=self.exchange
        ).select_related("order")
        result = []
        for row in rows.order_by("executed_at", "id"):
            time_ms = ms_from_datetime(row.executed_at)
            if time_ms < since_ms:
                continue
            result.append(
                (
                    row.order.exchange_order_id,
                    ExecutedFill(
                        row.trade_id, row.price, row.quantity, row.fee, row.fee_asset, time_ms, row.is_maker
                    ),
                )
            )
        return result

    def balances(self) -> list[BalanceLine]:
        return [BalanceLine(b.asset, b.free, b.locked) for b in Balance.objects.filter(mode=self.mode)]

    def close(self) -> None:
        self._symbols.clear()


def _intent_of(order: Order) -> OrderIntent:
    return OrderIntent(
        client_order_id=order.client_order_id,
        symbol=order.symbol.symbol,
        side=Side(order.side),
        type=OrderType(order.type),
        quantity=order.quantity,
        reference_price=order.reference_price,
        price=order.price,
    )


def _report(intent: OrderIntent, *, fill: ExecutedFill | None, updated_ms: int) -> OrderReport:
    return OrderReport(
        client_order_id=intent.client_order_id,
        exchange_order_id=f"dry-{intent.client_order_id}",
        symbol=intent.symbol,
        side=intent.side,
        type=intent.type,
        status=OrderStatus.FILLED if fill else OrderStatus.SUBMITTED,
        quantity=intent.quantity,
        price=intent.price,
        filled_quantity=fill.quantity if fill else Decimal(0),
        average_price=fill.price if fill else None,
        updated_ms=updated_ms,
        fills=(fill,) if fill else (),
    )
