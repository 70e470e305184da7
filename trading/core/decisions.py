"""What a signal asks for, given the book: the decisions the execution loop and the backtester
share, so that they cannot disagree on them.

A signal is skipped (with a stable reason) when it is stale, has no price, asks for what an open
order already does, exits with nothing held, or enters while a position is open. Otherwise it
becomes a market order: an exit sells the whole position; an entry buys what the rule's sizing
asks (a quote amount, or a share of equity), cut to the room under the position limits — never
to the balance, so that a balance too small for what the rule asks is refused by name."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from trading.core import risk
from trading.core.types import Side

ENTER = "enter"
EXIT = "exit"

# Skip reasons (stable: they label metrics and are stored on signal decisions).
NO_POSITION = "no_position"
POSITION_OPEN = "position_open"
SIGNAL_STALE = "signal_stale"
NO_PRICE = "no_price"
ORDER_PENDING = "order_pending"


@dataclass(frozen=True)
class Skip:
    reason: str


@dataclass(frozen=True)
class Wanted:
    """A market order to place: `quantity` is what the checks get; `requested` is what the
    rule asked for before the limits cut it (kept on the order row)."""

    side: Side
    quantity: Decimal
    requested: Decimal


@dataclass(frozen=True)
class SignalFacts:
    action: str  # ENTER | EXIT
    close_ms: int  # when the signal's candle closed
    timeframe_ms: int
    now_ms: int
    reference: Decimal | None  # the signal candle's close
    position_quantity: Decimal
    pending: frozenset[Side]  # sides of the symbol's orders still open
    max_age_s: int = 120


def signal_age_limit_ms(timeframe_ms: int, max_age_s: int) -> int:
    """A signal is acted on until this long after its candle closed: its timeframe, at most
    `max_age_s` (the market has moved on after that)."""
    return min(max_age_s * 1000, timeframe_ms)


def triage(facts: SignalFacts) -> Skip | Side:
    """The side the signal asks for, or why it asks for nothing."""
    if facts.now_ms - facts.close_ms > signal_age_limit_ms(facts.timeframe_ms, facts.max_age_s):
        return Skip(SIGNAL_STALE)
    if facts.reference is None or facts.reference <= 0:
        return Skip(NO_PRICE)
    side = Side.SELL if facts.action == EXIT else Side.BUY
    if side in facts.pending:
        return Skip(ORDER_PENDING)  # an order the same way still waits for its fill
    if side is Side.SELL and facts.position_quantity <= 0:
        return Skip(NO_POSITION)
    if side is Side.BUY and facts.position_quantity > 0:
        return Skip(POSITION_OPEN)
    return side


def exit_order(position_quantity: Decimal) -> Wanted:
    return Wanted(Side.SELL, position_quantity, position_quantity)


def entry_order(
    *,
    reference: Decimal,
    sizing_quote: Decimal | None,
    sizing_equity_pct: Decimal | None,
    equity: Decimal,
    limits: risk.RiskLimits,
    position_value: Decimal,
    total_exposure: Decimal,
) -> Wanted:
    quote = sizing_quote if sizing_quote is not None else equity * (sizing_equity_pct or Decimal(0)) / 100
    amount = risk.entry_quote_amount(
        sizing_quote=quote, limits=limits, position_value=position_value, total_exposure=total_exposure
    )
    requested = quote / reference
    quantity = amount / reference
    if quantity <= 0:
        # No room under the limits: checked as asked, so the refusal names the limit hit.
        quantity = requested
    return Wanted(Side.BUY, quantity, requested)
