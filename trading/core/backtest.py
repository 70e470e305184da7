"""The backtest engine: signals replayed through the same decisions, risk checks, fill model and
position accounting as the execution loop, without a database.

It mirrors what `trading.execution.ExecutionLoop` does with a `DryRunBroker` on a replay clock,
cycle by cycle, and a test holds the two against each other order by order:
- every signal is decided `decision_delay_ms` after its candle closed (the loop's clock in a
  replay), in the canonical order (close time, symbol, timeframe, rule version);
- before each decision, open orders fill on the first 1m candle that opens at or after the
  minute they were placed in and is over by then (`trading.core.fills`, no lookahead);
- the signal is triaged (`trading.core.decisions`), sized, checked (`trading.core.risk.check`)
  and becomes an order — or a rejection with its reason, or a skip;
- after the signals, stop loss and take profit are checked on the newest closed 1m candle.
The kill switch is not modelled (no exchange errors or latency in a replay; a drawdown trip
would depend on the loop's equity-snapshot cadence): what a backtest measures is the rule.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import overload

import numpy as np
import numpy.typing as npt

from trading.core import decisions, risk
from trading.core.fills import FillModel
from trading.core.identifiers import client_order_id
from trading.core.positions import PositionState, apply_fill
from trading.core.types import (
    ExecutedFill,
    KillSwitchState,
    OrderIntent,
    OrderStatus,
    OrderType,
    Refusal,
    Side,
    SymbolFilters,
)

MINUTE_MS = 60_000
_ZERO = Decimal(0)
_FLAT = PositionState()  # a symbol never traded (immutable: one for all)
_NO_SIDES: frozenset[Side] = frozenset()
_NO_EVENTS: list[SignalEvent] = []  # read only


@dataclass(frozen=True)
class Minute:
    """One closed 1m candle."""

    open_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal


ExactPrices = Callable[[int], tuple[Decimal, Decimal, Decimal, Decimal]]  # row → open, high, low, close


class MinuteColumns(Sequence[Minute]):
    """1m candles held as columns, for a long replay (a year is 525,600 of them): the open times,
    the closes as floats, and the exact prices behind a function of the row, so that a `Minute`
    (four Decimals) is made only for the rows the engine reads — those around its orders and,
    with protective exits, the newest closed one while a position is held.

    `close[i]` must be `float(exact(i)[3])` (performance draws its curves from it); the loader
    that builds the columns answers for that. Reading the sequence gives the same `Minute`s a list
    of them would."""

    def __init__(
        self, open_ms: npt.NDArray[np.int64], close: npt.NDArray[np.float64], exact: ExactPrices
    ) -> None:
        if open_ms.ndim != 1 or open_ms.shape != close.shape:
            raise ValueError(f"open_ms {open_ms.shape} and close {close.shape} must be 1-D of one length")
        self.open_ms = open_ms
        self.close = close
        self._exact = exact
        self._last: Minute | None = None  # the engine often reads one minute twice in a row
        self._last_index: int | None = None  # not -1: a read of minutes[-1] is not cached

    def __len__(self) -> int:
        return int(self.open_ms.size)

    @overload
    def __getitem__(self, index: int) -> Minute: ...

    @overload
    def __getitem__(self, index: slice) -> list[Minute]: ...

    def __getitem__(self, index: int | slice) -> Minute | list[Minute]:
        if index == self._last_index:  # before anything else: the engine's most frequent read
            assert self._last is not None
            return self._last
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        count = self.open_ms.size
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError(f"minute {index} of {count}")
        if index != self._last_index:
            o, h, low, c = self._exact(index)
            self._last, self._last_index = Minute(int(self.open_ms[index]), o, h, low, c), index
        assert self._last is not None
        return self._last


@dataclass(frozen=True)
class MarketSymbol:
    symbol: str
    base: str
    quote: str
    filters: SymbolFilters
    minutes: Sequence[Minute]  # in time order: a list, or MinuteColumns for a long replay
    trading: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.minutes, MinuteColumns):
            opens = self.minutes.open_ms.tolist()  # without making every Minute
        else:
            opens = [m.open_ms for m in self.minutes]
        object.__setattr__(self, "_opens", opens)

    @property
    def opens(self) -> list[int]:
        """The minutes' open times (ms), in order."""
        opens: list[int] = self._opens  # type: ignore[attr-defined]
        return opens

    def first_from(self, open_ms: int) -> int:
        """Index of the first minute opening at or after `open_ms`."""
        return bisect.bisect_left(self._opens, open_ms)  # type: ignore[attr-defined]

    def last_closed(self, now_ms: int) -> Minute | None:
        """The newest minute that is over at `now_ms`."""
        index = bisect.bisect_right(self._opens, now_ms - MINUTE_MS) - 1  # type: ignore[attr-defined]
        return self.minutes[index] if index >= 0 else None


@dataclass(frozen=True)
class SignalEvent:
    close_ms: int
    symbol: str
    timeframe: str
    timeframe_ms: int
    action: str  # decisions.ENTER | decisions.EXIT
    reference: Decimal | None  # the signal candle's close
    rule_version: int


@dataclass(frozen=True)
class RuleTerms:
    """What one rule version says about sizing and limits (its signals are sized by it)."""

    limits: risk.RiskLimits
    sizing_quote: Decimal | None
    sizing_equity_pct: Decimal | None


@dataclass(frozen=True)
class BacktestSettings:
    exchange: str
    limits: risk.RiskLimits
    sizing_quote: Decimal | None
    sizing_equity_pct: Decimal | None
    fill_model: FillModel
    opening_balance: Decimal
    quote_asset: str = "USDT"
    stop_loss_pct: Decimal | None = None
    take_profit_pct: Decimal | None = None
    max_signal_age_s: int = 120
    decision_delay_ms: int = 1_000
    exchange_limits: risk.ExchangeLimits = field(default_factory=risk.ExchangeLimits)
    # Other rule versions' terms, by version id (a replay of a period in which several ran).
    terms: Mapping[int, RuleTerms] = field(default_factory=dict)

    def terms_for(self, rule_version: int) -> RuleTerms:
        return self.terms.get(rule_version) or self.own_terms

    @cached_property
    def own_terms(self) -> RuleTerms:
        """The terms of these settings themselves (made once: asked for at every decision)."""
        return RuleTerms(self.limits, self.sizing_quote, self.sizing_equity_pct)


@dataclass(slots=True)
class SimOrder:
    client_order_id: str
    symbol: str
    side: Side
    quantity: Decimal
    requested: Decimal
    reference: Decimal
    placed_ms: int
    status: OrderStatus
    reject_reason: str = ""
    reject_detail: str = ""
    fill: ExecutedFill | None = None
    signal: SignalEvent | None = None
    protective: str = ""  # "stop_loss" | "take_profit" for those orders
    # The intent as the checks let it out (what the fill model matches); None: rebuilt from the
    # fields above (an order handed in by `InitialBook`).
    intent: OrderIntent | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Decision:
    signal: SignalEvent
    outcome: str  # "ordered" | "skipped"
    reason: str


@dataclass
class BacktestResult:
    orders: list[SimOrder]
    decisions: list[Decision]
    positions: dict[str, PositionState]
    balances: dict[str, Decimal]


@dataclass
class _Book:
    positions: dict[str, PositionState] = field(default_factory=dict)
    balances: dict[str, Decimal] = field(default_factory=dict)
    last_trade_ms: dict[str, int] = field(default_factory=dict)
    last_loss_ms: dict[str, int] = field(default_factory=dict)
    open_orders: list[SimOrder] = field(default_factory=list)
    sent: list[tuple[str, int]] = field(default_factory=list)  # (symbol, placed ms)
    sent_ms: list[int] = field(default_factory=list)  # the placed ms of `sent`, to bisect on


def canonical_order(events: Iterable[SignalEvent]) -> list[SignalEvent]:
    return sorted(events, key=lambda e: (e.close_ms, e.symbol, e.timeframe_ms, e.rule_version))


@dataclass
class InitialBook:
    """Where a replay starts when it does not start from nothing (a drift check of a period in
    the middle of a dry-run): positions, balances, last trade and loss times, orders still open."""

    positions: dict[str, PositionState]
    balances: dict[str, Decimal]
    last_trade_ms: dict[str, int] = field(default_factory=dict)
    last_loss_ms: dict[str, int] = field(default_factory=dict)
    open_orders: list[SimOrder] = field(default_factory=list)


def run(
    events: Iterable[SignalEvent],
    *,
    symbols: Mapping[str, MarketSymbol],
    settings: BacktestSettings,
    initial: InitialBook | None = None,
) -> BacktestResult:
    if initial is None:
        book = _Book(balances={settings.quote_asset: settings.opening_balance})
    else:
        book = _Book(
            positions=dict(initial.positions),
            balances=dict(initial.balances),
            last_trade_ms=dict(initial.last_trade_ms),
            last_loss_ms=dict(initial.last_loss_ms),
            open_orders=list(initial.open_orders),
        )
    orders: list[SimOrder] = []
    decided: list[Decision] = []
    pending = canonical_order(events)
    by_time: dict[int, list[SignalEvent]] = {}
    for event in pending:
        by_time.setdefault(event.close_ms + settings.decision_delay_ms, []).append(event)
    waiting: list[SignalEvent] = []  # deferred by the exchange's request limits
    cycles = set(by_time)
    if by_time and (settings.stop_loss_pct is not None or settings.take_profit_pct is not None):
        # The loop checks stops every minute, signal or not: so does the replay.
        first, last_cycle = min(by_time), max(by_time)
        cycles.update(range(first, last_cycle + 1, MINUTE_MS))
    for now in sorted(cycles):
        arrived = by_time.get(now, _NO_EVENTS)
        if not arrived and not waiting and not book.open_orders and not _holds(book):
            continue  # a stop-check minute with nothing open, waiting or held: it would do nothing
        _settle(book, symbols, settings, now)
        queue = waiting + arrived if waiting else arrived
        waiting = []
        for index, event in enumerate(queue):
            outcome = _decide(event, book, symbols, settings, now, orders)
            if outcome is None:  # the exchange's request limits: it and the rest wait
                waiting = queue[index:]
                break
            decided.append(outcome)
        _protect(book, symbols, settings, now, orders)
    last = max(by_time, default=0)
    _settle(book, symbols, settings, last + MINUTE_MS)  # what the final orders filled at
    return BacktestResult(orders=orders, decisions=decided, positions=book.positions, balances=book.balances)


def _holds(book: _Book) -> bool:
    return any(state.quantity > 0 for state in book.positions.values())


def _settle(book: _Book, symbols: Mapping[str, MarketSymbol], settings: BacktestSettings, now: int) -> None:
    if not book.open_orders:
        return
    still: list[SimOrder] = []
    for order in book.open_orders:
        market = symbols[order.symbol]
        fill = _match(order, market, settings.fill_model, now)
        if fill is None:
            still.append(order)
            continue
        order.fill, order.status = fill, OrderStatus.FILLED
        state = book.positions.get(order.symbol, _FLAT)
        after = apply_fill(state, order.side, fill, quote_asset=market.quote)
        book.positions[order.symbol] = after
        book.last_trade_ms[order.symbol] = fill.time_ms
        if after.realized_pnl < state.realized_pnl:
            book.last_loss_ms[order.symbol] = fill.time_ms
        notional = fill.price * fill.quantity
        sign = -1 if order.side is Side.BUY else 1
        book.balances[market.quote] = book.balances.get(market.quote, _ZERO) + sign * notional
        book.balances[market.base] = book.balances.get(market.base, _ZERO) - sign * fill.quantity
        book.balances[fill.fee_asset] = book.balances.get(fill.fee_asset, _ZERO) - fill.fee
    book.open_orders = still


def _match(order: SimOrder, market: MarketSymbol, model: FillModel, now: int) -> ExecutedFill | None:
    opens = market.opens
    index = market.first_from(order.placed_ms - order.placed_ms % MINUTE_MS)
    if index >= len(opens) or opens[index] + MINUTE_MS > now:
        return None  # no candle of its minute or after is over yet
    intent = order.intent or OrderIntent(
        order.client_order_id, order.symbol, order.side, OrderType.MARKET, order.quantity, order.reference
    )
    while index < len(opens) and opens[index] + MINUTE_MS <= now:
        minute = market.minutes[index]
        fill = model.on_candle(
            intent,
            open_price=minute.open,
            high=minute.high,
            low=minute.low,
            open_ms=minute.open_ms,
            tick=market.filters.tick_size,
            quote_asset=market.quote,
        )
        if fill is not None:
            return fill
        index += 1
    return None


def _context(
    book: _Book,
    symbols: Mapping[str, MarketSymbol],
    settings: BacktestSettings,
    symbol: str,
    reference: Decimal,
    now: int,
) -> risk.RiskContext:
    exposure = _ZERO
    for name, state in book.positions.items():
        if state.quantity <= 0:
            continue
        if name == symbol:
            mark = reference
        else:
            last = symbols[name].last_closed(now)
            mark = last.close if last else state.average_price
        exposure += state.quantity * mark
    held = book.positions.get(symbol, _FLAT)
    market = symbols[symbol]
    # `sent` grows in time order (each entry is stamped with the cycle's time, and cycles run in
    # time order), so the last minute's entries are its tail: found by bisection, not by a scan
    # of every order of the run (which made a year's replay quadratic in its orders).
    first = bisect.bisect_right(book.sent_ms, now - MINUTE_MS)
    recent = book.sent[first:]
    return risk.RiskContext(
        now_ms=now,
        kill_switch=KillSwitchState.ACTIVE,
        symbol_trading=market.trading,
        position_quantity=held.quantity,
        position_value=held.quantity * reference,
        total_exposure=exposure,
        free_quote=book.balances.get(market.quote, _ZERO),
        free_base=book.balances.get(market.base, _ZERO),
        taker_fee_bps=settings.fill_model.taker_fee_bps,
        last_trade_ms=max(book.last_trade_ms.values(), default=None),
        last_symbol_trade_ms=book.last_trade_ms.get(symbol),
        last_loss_ms=max(book.last_loss_ms.values(), default=None),
        symbol_order_times=[at for name, at in recent if name == symbol],
        order_times=[at for _, at in recent],
    )


def _decide(
    event: SignalEvent,
    book: _Book,
    symbols: Mapping[str, MarketSymbol],
    settings: BacktestSettings,
    now: int,
    orders: list[SimOrder],
) -> Decision | None:
    held = book.positions.get(event.symbol, _FLAT)
    side = decisions.triage(
        decisions.SignalFacts(
            action=event.action,
            close_ms=event.close_ms,
            timeframe_ms=event.timeframe_ms,
            now_ms=now,
            reference=event.reference,
            position_quantity=held.quantity,
            pending=frozenset(o.side for o in book.open_orders if o.symbol == event.symbol)
            if book.open_orders
            else _NO_SIDES,
            max_age_s=settings.max_signal_age_s,
        )
    )
    if isinstance(side, decisions.Skip):
        return Decision(event, "skipped", side.reason)
    assert event.reference is not None
    context = _context(book, symbols, settings, event.symbol, event.reference, now)
    if side is Side.SELL:
        wanted = decisions.exit_order(held.quantity)
    else:
        terms = settings.terms_for(event.rule_version)
        wanted = decisions.entry_order(
            reference=event.reference,
            sizing_quote=terms.sizing_quote,
            sizing_equity_pct=terms.sizing_equity_pct,
            equity=context.free_quote + context.total_exposure,
            limits=terms.limits,
            position_value=context.position_value,
            total_exposure=context.total_exposure,
        )
    cid = client_order_id(
        settings.exchange, event.symbol, event.timeframe, event.close_ms, event.rule_version, event.action
    )
    intent = OrderIntent(cid, event.symbol, wanted.side, OrderType.MARKET, wanted.quantity, event.reference)
    order = _place(intent, book, symbols, settings, now, context, requested=wanted.requested, signal=event)
    if order is None:
        return None
    orders.append(order)
    return Decision(event, "ordered", order.reject_reason)


def _place(
    intent: OrderIntent,
    book: _Book,
    symbols: Mapping[str, MarketSymbol],
    settings: BacktestSettings,
    now: int,
    context: risk.RiskContext,
    *,
    requested: Decimal,
    signal: SignalEvent | None,
    protective: str = "",
) -> SimOrder | None:
    checked = risk.check(
        intent,
        filters=symbols[intent.symbol].filters,
        limits=settings.terms_for(signal.rule_version).limits if signal else settings.limits,
        context=context,
        exchange=settings.exchange_limits,
    )
    if isinstance(checked, Refusal):
        if checked.reason in (risk.EXCHANGE_ORDER_LIMIT, risk.EXCHANGE_WEIGHT_LIMIT):
            return None  # waits, as in the loop
        return SimOrder(
            intent.client_order_id,
            intent.symbol,
            intent.side,
            intent.quantity,
            requested,
            intent.reference_price,
            now,
            OrderStatus.REJECTED,
            checked.reason,
            checked.detail,
            signal=signal,
            protective=protective,
        )
    order = SimOrder(
        checked.client_order_id,
        checked.symbol,
        checked.side,
        checked.quantity,
        requested,
        checked.reference_price,
        now,
        OrderStatus.SUBMITTED,
        signal=signal,
        protective=protective,
        intent=checked,
    )
    book.open_orders.append(order)
    book.sent.append((order.symbol, now))
    book.sent_ms.append(now)
    return order


def _protect(
    book: _Book,
    symbols: Mapping[str, MarketSymbol],
    settings: BacktestSettings,
    now: int,
    orders: list[SimOrder],
) -> None:
    if settings.stop_loss_pct is None and settings.take_profit_pct is None:
        return
    for name in sorted(book.positions):
        state = book.positions[name]
        if state.quantity <= 0 or state.average_price <= 0:
            continue
        if any(o.symbol == name and o.side is Side.SELL for o in book.open_orders):
            continue
        last = symbols[name].last_closed(now)
        if last is None:
            continue
        move = (last.close - state.average_price) / state.average_price * 100
        kind = "stop_loss" if settings.stop_loss_pct is not None and move <= -settings.stop_loss_pct else ""
        if not kind and settings.take_profit_pct is not None and move >= settings.take_profit_pct:
            kind = "take_profit"
        if not kind:
            continue
        episode = book.last_trade_ms.get(name, 0)
        cid = client_order_id(settings.exchange, name, kind, episode, last.open_ms + MINUTE_MS)
        if any(o.client_order_id == cid for o in orders):
            continue
        intent = OrderIntent(cid, name, Side.SELL, OrderType.MARKET, state.quantity, last.close)
        context = _context(book, symbols, settings, name, last.close, now)
        order = _place(
            intent,
            book,
            symbols,
            settings,
            now,
            context,
            requested=state.quantity,
            signal=None,
            protective=kind,
        )
        if order is not None:
            orders.append(order)
