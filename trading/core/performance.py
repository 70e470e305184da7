"""What a backtest earned and how it got there: round-trip trades, PnL, fees, win rate, profit
factor, maximum drawdown, Sharpe and Sortino, exposure, and the equity curve a report plots.

Exact where money is counted, floats where a curve is drawn. Trades, PnL, fees and the final
equity are Decimals computed from the fills (at 60 significant digits, like the position book).
The per-minute equity curve, the drawdown and the ratios are float64, computed with numpy from
the candles' float closes. Decimals become floats only on the way into those figures: the
running cash and positions (`_as_floats`), the opening balance as first peak and first daily
value, and the profit factor's final ratio.

Conventions
- The minutes are those opening in [start_ms, end_ms) on the UTC minute grid. A minute's equity
  is valued at its close: the cash after every fill that happened by the end of that minute (a
  fill's time is the open of the candle it filled on), plus each position x that minute's
  close. A symbol with no candle in a minute keeps its previous close (before its first
  candle, its first close).
- Cash = opening balance - buys' notional + sells' notional - fees. Fees are in the quote asset.
- A trade is a round trip on one symbol, from flat to flat: several buys may build it, the sell
  that brings the position back to zero closes it. A trade still open at the end has no exit
  time and is marked at the last close of the period; its net PnL is unrealized.
- `net_pnl` counts every trade, open ones at the mark, so `net_pnl == final_equity - opening`.
  `win_rate` and `profit_factor` count closed trades only. A trade wins when its net PnL (after
  both legs' fees) is above zero; a trade at exactly zero is neither a win nor a loss, but counts
  in the win rate's denominator.
- `profit_factor` = sum of winning closed trades' net PnL / |sum of losing ones|: None when no
  closed trade lost (it would be infinite, or 0/0), 0.0 when some lost and none won.
- `max_drawdown_pct` is the deepest fall of the per-minute equity below its running peak (the
  opening balance counts as the first peak), as a positive percentage of that peak. The
  drawdown series in the curve is the same thing signed: zero or negative percentages.
- Sharpe and Sortino use daily returns: the equity at each UTC day's last minute in the period
  (a partial first or last day counts as a day), against the previous day's (the opening balance
  for the first). Risk-free rate 0, annualised x sqrt(365) since crypto trades every day.
  Sharpe = mean / sample standard deviation (ddof=1); Sortino = mean / downside deviation,
  sqrt(mean(min(r, 0)^2)) over all days. Both are None with fewer than 2 daily returns, when
  their deviation is zero (below 1e-12: flat equity, or no losing day for Sortino), or when the
  equity reached zero at a day end (which a spot book that pays for its buys cannot).
- `exposure_pct` is the share of the period's minutes that end with any position held.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal, localcontext
from typing import Any

import numpy as np
import numpy.typing as npt

from trading.core.backtest import BacktestResult, Minute, MinuteColumns
from trading.core.types import Side

MINUTE_MS = 60_000
DAY_MS = 86_400_000
DAYS_PER_YEAR = 365  # crypto markets never close
_ZERO = Decimal(0)
_WIDE = Context(prec=60)
_PRICE_QUANTUM = Decimal("1e-18")  # average prices, as in trading.core.positions
_FLAT = 1e-12  # a deviation below this is float noise on a flat series

Int64s = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TradeFill:
    """One fill, as performance sees it. The fee is in the quote asset."""

    symbol: str
    side: Side
    time_ms: int
    price: Decimal
    quantity: Decimal
    fee: Decimal

    @property
    def notional(self) -> Decimal:
        # The wide context's own methods: what `with localcontext(_WIDE)` computes, without
        # entering a context for each of a year's 50,000 products.
        return _WIDE.multiply(self.price, self.quantity)

    @property
    def cash_change(self) -> Decimal:
        notional = self.notional
        return _WIDE.subtract(notional if self.side is Side.SELL else _WIDE.minus(notional), self.fee)


def fills_of(result: BacktestResult, *, quote_asset: str = "USDT") -> list[TradeFill]:
    """The filled orders of a backtest, in fill-time order (fills at the same time keep the order
    they were placed in). A fee charged in another asset cannot be counted in quote without a
    price for it, so it is refused rather than dropped (the fill model always charges quote)."""
    fills: list[TradeFill] = []
    for order in result.orders:
        fill = order.fill
        if fill is None:
            continue
        if fill.fee and fill.fee_asset != quote_asset:
            raise ValueError(
                f"{order.client_order_id}: fee of {fill.fee} {fill.fee_asset} is not in {quote_asset}"
            )
        fills.append(TradeFill(order.symbol, order.side, fill.time_ms, fill.price, fill.quantity, fill.fee))
    fills.sort(key=lambda f: f.time_ms)
    return fills


@dataclass(frozen=True, eq=False)
class CandleSeries:
    """A symbol's 1m candles as arrays: open times (ms, ascending) and closes. Closes are floats
    for the curve; the final mark is read back as `Decimal(repr(close))`, which is the exact
    price whenever the close was `float(price)` of a price with at most 15 significant digits
    (every exchange tick is), so the exact figures stay exact."""

    open_ms: Int64s
    close: Floats

    def __post_init__(self) -> None:
        open_ms = np.ascontiguousarray(self.open_ms, dtype=np.int64)
        close = np.ascontiguousarray(self.close, dtype=np.float64)
        if open_ms.ndim != 1 or open_ms.shape != close.shape:
            raise ValueError(f"open_ms {open_ms.shape} and close {close.shape} must be 1-D of one length")
        if open_ms.size > 1 and not bool(np.all(np.diff(open_ms) > 0)):
            raise ValueError("open_ms must be strictly ascending")
        if not bool(np.all(np.isfinite(close) & (close > 0))):
            raise ValueError("closes must be finite and positive")
        object.__setattr__(self, "open_ms", open_ms)
        object.__setattr__(self, "close", close)

    @classmethod
    def of_minutes(cls, minutes: Sequence[Minute]) -> CandleSeries:
        if isinstance(minutes, MinuteColumns):  # already columns, closes as float(close)
            return cls(minutes.open_ms, minutes.close)
        count = len(minutes)
        return cls(
            np.fromiter((m.open_ms for m in minutes), dtype=np.int64, count=count),
            np.fromiter((float(m.close) for m in minutes), dtype=np.float64, count=count),
        )

    def closes_at(self, minutes: Int64s) -> Floats:
        """The close of each minute, carried forward over gaps (the first close before any)."""
        index = np.searchsorted(self.open_ms, minutes, side="right") - 1
        return self.close[np.maximum(index, 0)]

    def mark_at(self, minute: int) -> Decimal:
        return Decimal(repr(float(self.closes_at(np.array([minute], dtype=np.int64))[0])))


@dataclass(frozen=True, eq=False)
class EquityCurve:
    """Equity per minute. `times_ms` are minute opens; each equity is as of that minute's close.
    `drawdown_pct` is zero or negative: how far below its running peak the equity stands."""

    times_ms: Int64s
    equity: Floats
    drawdown_pct: Floats

    def __len__(self) -> int:
        return int(self.times_ms.size)

    def downsampled(self, max_points: int) -> EquityCurve:
        """At most `max_points` points for a plot, keeping the extremes: the first and last
        points and, in each of (max_points - 2) // 3 equal buckets, the lowest and highest equity
        and the deepest drawdown (which need not be at the lowest equity when the peak rose in
        the bucket). The worst drawdown and the peak survive any reduction."""
        if max_points < 5:
            raise ValueError(f"max_points must be at least 5, got {max_points}")
        count = len(self)
        if count <= max_points:
            return self
        buckets = (max_points - 2) // 3
        size = -(-count // buckets)
        padding = buckets * size - count
        offsets = np.arange(buckets, dtype=np.int64) * size

        def grid(values: Floats, fill: float) -> Floats:
            return np.concatenate([values, np.full(padding, fill)]).reshape(buckets, size)

        picks = [
            offsets + np.argmin(grid(self.equity, math.inf), axis=1),
            offsets + np.argmax(grid(self.equity, -math.inf), axis=1),
            offsets + np.argmin(grid(self.drawdown_pct, math.inf), axis=1),
            np.array([0, count - 1], dtype=np.int64),
        ]
        keep = np.unique(np.concatenate(picks))
        keep = keep[keep < count]  # a bucket made only of padding points past the end
        return EquityCurve(self.times_ms[keep], self.equity[keep], self.drawdown_pct[keep])

    def to_json(self) -> dict[str, Any]:
        return {
            "times_ms": self.times_ms.tolist(),
            "equity": np.round(self.equity, 6).tolist(),
            "drawdown_pct": np.round(self.drawdown_pct, 4).tolist(),
        }


@dataclass(frozen=True)
class Trade:
    """A round trip. `quantity` is what was bought; `entry_price` the buys' average,
    `exit_price` the average the quantity left at (for an open trade, what is still held counts
    at the final mark). `gross_pnl` is exit value - entry cost; `net_pnl` also pays both legs'
    fees."""

    symbol: str
    entry_ms: int
    exit_ms: int | None  # None: still open at the end of the period
    quantity: Decimal
    entry_price: Decimal
    exit_price: Decimal
    gross_pnl: Decimal
    fees: Decimal
    net_pnl: Decimal

    @property
    def is_open(self) -> bool:
        return self.exit_ms is None

    def to_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "entry_ms": self.entry_ms,
            "exit_ms": self.exit_ms,
            "quantity": exact_text(self.quantity),
            "entry_price": exact_text(self.entry_price),
            "exit_price": exact_text(self.exit_price),
            "gross_pnl": exact_text(self.gross_pnl),
            "fees": exact_text(self.fees),
            "net_pnl": exact_text(self.net_pnl),
        }


@dataclass(frozen=True, eq=False)
class Performance:
    start_ms: int
    end_ms: int
    opening_balance: Decimal
    final_equity: Decimal  # exact: cash + positions at the final marks
    net_pnl: Decimal
    gross_pnl: Decimal
    fees: Decimal
    trades: tuple[Trade, ...]  # by entry time, then symbol
    win_rate: float | None  # a fraction of closed trades, 0..1
    profit_factor: float | None
    max_drawdown_pct: float  # >= 0
    sharpe: float | None
    sortino: float | None
    exposure_pct: float  # 0..100
    equity_curve: EquityCurve

    @property
    def trade_count(self) -> int:
        return len(self.trades)

    @property
    def closed_trades(self) -> tuple[Trade, ...]:
        return tuple(t for t in self.trades if not t.is_open)

    def to_json(self, *, curve_points: int | None = 2_000) -> dict[str, Any]:
        """A JSON-ready dict: Decimals as strings, ratios and percentages to 4 decimals, the
        equity curve downsampled to `curve_points` (None leaves it out)."""
        out: dict[str, Any] = {
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "opening_balance": exact_text(self.opening_balance),
            "final_equity": exact_text(self.final_equity),
            "net_pnl": exact_text(self.net_pnl),
            "gross_pnl": exact_text(self.gross_pnl),
            "fees": exact_text(self.fees),
            "trade_count": self.trade_count,
            "closed_trade_count": len(self.closed_trades),
            "win_rate": _rounded(self.win_rate),
            "profit_factor": _rounded(self.profit_factor),
            "max_drawdown_pct": _rounded(self.max_drawdown_pct),
            "sharpe": _rounded(self.sharpe),
            "sortino": _rounded(self.sortino),
            "exposure_pct": _rounded(self.exposure_pct),
            "trades": [t.to_json() for t in self.trades],
        }
        if curve_points is not None:
            out["equity_curve"] = self.equity_curve.downsampled(curve_points).to_json()
        return out


def compute(
    fills: Sequence[TradeFill],
    *,
    candles: Mapping[str, CandleSeries],
    opening_balance: Decimal,
    start_ms: int,
    end_ms: int,
) -> Performance:
    """The performance of `fills` over [start_ms, end_ms), starting from `opening_balance` in
    the quote asset. Every traded symbol needs its candles; every fill must lie in the period."""
    if not opening_balance > 0:
        raise ValueError(f"opening balance must be positive, got {opening_balance}")
    first = -(-start_ms // MINUTE_MS) * MINUTE_MS
    minutes = np.arange(first, end_ms, MINUTE_MS, dtype=np.int64)
    if not minutes.size:
        raise ValueError(f"[{start_ms}, {end_ms}) holds no whole minute")
    last_minute = int(minutes[-1])
    ordered = sorted(fills, key=lambda f: f.time_ms)  # stable: same-time fills keep their order
    by_symbol: dict[str, list[TradeFill]] = {}
    for fill in ordered:
        _check(fill, candles, start_ms, end_ms)
        by_symbol.setdefault(fill.symbol, []).append(fill)
    marks = {symbol: candles[symbol].mark_at(last_minute) for symbol in by_symbol}

    trades = sorted(
        (t for symbol, own in by_symbol.items() for t in _round_trips(symbol, own, marks[symbol])),
        key=lambda t: (t.entry_ms, t.symbol),
    )
    with localcontext(_WIDE):
        gross = sum((t.gross_pnl for t in trades), _ZERO)
        fees = sum((f.fee for f in ordered), _ZERO)
        net = sum((t.net_pnl for t in trades), _ZERO)

    # The curve: each fill changes the cash (and its symbol's position) from the minute it fell
    # in; searchsorted finds, for every minute at once, how many fills were done by its close.
    ends = minutes + MINUTE_MS
    cash = _running(opening_balance, [f.cash_change for f in ordered])
    equity = _as_floats(cash)[np.searchsorted(_times(ordered), ends, side="left")]
    held = np.zeros(minutes.size, dtype=bool)
    final_equity = cash[-1]
    for symbol, own in by_symbol.items():
        position = _running(_ZERO, [f.quantity if f.side is Side.BUY else -f.quantity for f in own])
        quantity = _as_floats(position)[np.searchsorted(_times(own), ends, side="left")]
        equity = equity + quantity * candles[symbol].closes_at(minutes)
        held |= quantity > 0
        with localcontext(_WIDE):
            final_equity += position[-1] * marks[symbol]

    peak = np.maximum(np.maximum.accumulate(equity), float(opening_balance))
    drawdown = (equity / peak - 1.0) * 100.0
    sharpe, sortino = _ratios(_daily_returns(minutes, equity, float(opening_balance)))
    closed = [t.net_pnl for t in trades if not t.is_open]
    return Performance(
        start_ms=start_ms,
        end_ms=end_ms,
        opening_balance=opening_balance,
        final_equity=final_equity,
        net_pnl=net,
        gross_pnl=gross,
        fees=fees,
        trades=tuple(trades),
        win_rate=sum(1 for pnl in closed if pnl > 0) / len(closed) if closed else None,
        profit_factor=_profit_factor(closed),
        max_drawdown_pct=max(0.0, -float(drawdown.min())),
        sharpe=sharpe,
        sortino=sortino,
        exposure_pct=float(held.mean()) * 100.0,
        equity_curve=EquityCurve(minutes, equity, drawdown),
    )


def _check(fill: TradeFill, candles: Mapping[str, CandleSeries], start_ms: int, end_ms: int) -> None:
    if not start_ms <= fill.time_ms < end_ms:
        raise ValueError(f"{fill.symbol} fill at {fill.time_ms} is outside [{start_ms}, {end_ms})")
    series = candles.get(fill.symbol)
    if series is None or not series.open_ms.size:
        raise ValueError(f"{fill.symbol} was traded but has no candles")
    if not (fill.price > 0 and fill.quantity > 0 and fill.fee >= 0):
        raise ValueError(f"{fill.symbol} fill at {fill.time_ms}: price and quantity > 0, fee >= 0")


def _round_trips(symbol: str, fills: Sequence[TradeFill], mark: Decimal) -> list[Trade]:
    trades: list[Trade] = []
    held = bought = paid = received = fees = _ZERO
    entry_ms = 0
    with localcontext(_WIDE):
        for fill in fills:
            if fill.side is Side.BUY:
                if not held:
                    entry_ms, bought, paid, received, fees = fill.time_ms, _ZERO, _ZERO, _ZERO, _ZERO
                held += fill.quantity
                bought += fill.quantity
                paid += fill.notional
            else:
                if fill.quantity > held:
                    raise ValueError(f"{symbol}: selling {fill.quantity} at {fill.time_ms}, {held} held")
                held -= fill.quantity
                received += fill.notional
            fees += fill.fee
            if fill.side is Side.SELL and not held:
                trades.append(_trade(symbol, entry_ms, fill.time_ms, bought, paid, received, fees))
        if held:
            trades.append(_trade(symbol, entry_ms, None, bought, paid, received + held * mark, fees))
    return trades


def _trade(
    symbol: str,
    entry_ms: int,
    exit_ms: int | None,
    bought: Decimal,
    paid: Decimal,
    left_for: Decimal,
    fees: Decimal,
) -> Trade:
    with localcontext(_WIDE):
        gross = left_for - paid
        return Trade(
            symbol=symbol,
            entry_ms=entry_ms,
            exit_ms=exit_ms,
            quantity=bought,
            entry_price=(paid / bought).quantize(_PRICE_QUANTUM).normalize(),
            exit_price=(left_for / bought).quantize(_PRICE_QUANTUM).normalize(),
            gross_pnl=gross,
            fees=fees,
            net_pnl=gross - fees,
        )


def _running(start: Decimal, changes: Sequence[Decimal]) -> list[Decimal]:
    """`start` followed by the exact running total after each change."""
    levels = [start]
    with localcontext(_WIDE):
        for change in changes:
            levels.append(levels[-1] + change)
    return levels


def _as_floats(values: Sequence[Decimal]) -> Floats:
    return np.array([float(v) for v in values], dtype=np.float64)


def _times(fills: Sequence[TradeFill]) -> Int64s:
    return np.array([f.time_ms for f in fills], dtype=np.int64)


def _daily_returns(minutes: Int64s, equity: Floats, opening: float) -> Floats:
    days = minutes // DAY_MS
    day_ends = np.append(np.flatnonzero(np.diff(days)), minutes.size - 1)
    values: Floats = np.concatenate([[opening], equity[day_ends]])
    if not bool(np.all(values[:-1] > 0)):  # a wiped-out book has no returns to speak of
        return np.empty(0, dtype=np.float64)
    returns: Floats = values[1:] / values[:-1] - 1.0
    return returns


def _ratios(returns: Floats) -> tuple[float | None, float | None]:
    if returns.size < 2:
        return None, None
    mean = float(returns.mean())
    deviation = float(returns.std(ddof=1))
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2)))
    scale = math.sqrt(DAYS_PER_YEAR)
    sharpe = mean / deviation * scale if deviation > _FLAT else None
    sortino = mean / downside * scale if downside > _FLAT else None
    return sharpe, sortino


def _profit_factor(closed: Sequence[Decimal]) -> float | None:
    with localcontext(_WIDE):
        wins = sum((pnl for pnl in closed if pnl > 0), _ZERO)
        losses = -sum((pnl for pnl in closed if pnl < 0), _ZERO)
        if not losses:
            return None
        return float(wins / losses)


def exact_text(value: Decimal) -> str:
    """`format(value, "f")`: a Decimal's own text unless that is in exponent notation (str() is
    2.5 times faster, and a year's results write 100,000 of them)."""
    text = str(value)
    return text if "E" not in text else format(value, "f")


def _rounded(value: float | None, places: int = 4) -> float | None:
    return None if value is None else round(value, places)
