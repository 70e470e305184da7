"""Risk checks: the last gate before an order leaves the process. Pure: every fact the checks need
is handed in as a `RiskContext`, so the same checks run live, in dry-run and in backtests.

Order of checks (the first failure is the reason given): kill switch, symbol status, symbol
filters, position limits (entries), balance, cooldowns (entries), the rule's order rate limits
(entries), the exchange's order-count limit (everything). An order that reduces a position is
never held back by cooldowns or by the rule's own rate limits: getting out must stay possible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from trading.core.filters import conform
from trading.core.types import KillSwitchState, OrderIntent, Refusal, Side, SymbolFilters

HALTED = "kill_switch_halted"
REDUCING = "kill_switch_reducing"
SYMBOL_NOT_TRADING = "symbol_not_trading"
MAX_POSITION_SYMBOL = "max_position_per_symbol"
MAX_POSITION_TOTAL = "max_position_total"
INSUFFICIENT_BALANCE = "insufficient_balance"
NOTHING_TO_SELL = "nothing_to_sell"
COOLDOWN_TRADE = "cooldown_after_trade"
COOLDOWN_LOSS = "cooldown_after_loss"
COOLDOWN_SYMBOL = "cooldown_per_symbol"
RATE_SYMBOL = "rate_limit_per_symbol"
RATE_GLOBAL = "rate_limit_global"
EXCHANGE_ORDER_LIMIT = "exchange_order_limit"
EXCHANGE_WEIGHT_LIMIT = "exchange_weight_limit"

_MINUTE_MS = 60_000
_TEN_SECONDS_MS = 10_000


@dataclass(frozen=True)
class RiskLimits:
    """A rule version's limits (quote currency amounts, seconds, orders per minute)."""

    max_position_per_symbol: Decimal
    max_position_total: Decimal
    after_trade_s: int = 0
    after_loss_s: int = 0
    per_symbol_s: int = 0
    per_symbol_per_minute: int = 2
    global_per_minute: int = 30


@dataclass(frozen=True)
class ExchangeLimits:
    """The exchange's own limits. We stop a little short of them (`headroom`) so that requests
    we make for other reasons (queries, cancels) never push an order over."""

    orders_per_10s: int = 50
    weight_per_minute: int = 6000
    headroom: float = 0.8


@dataclass(slots=True)
class RiskContext:
    """The facts the checks read. Not frozen: one is made for every order a backtest places (a
    year's makes 26,000), and a frozen dataclass's init sets each of its 16 fields through
    object.__setattr__, twice the cost; nothing keeps or changes one after the check."""

    now_ms: int
    kill_switch: KillSwitchState
    symbol_trading: bool
    position_quantity: Decimal
    position_value: Decimal  # the symbol's position at the reference price
    total_exposure: Decimal  # every position at its mark, this one included
    free_quote: Decimal
    free_base: Decimal
    taker_fee_bps: Decimal = Decimal(10)
    last_trade_ms: int | None = None  # any symbol
    last_symbol_trade_ms: int | None = None
    last_loss_ms: int | None = None
    # Times (ms) of orders sent in the last minute: this symbol's and everyone's.
    symbol_order_times: Sequence[int] = field(default=())
    order_times: Sequence[int] = field(default=())
    exchange_orders_10s: int = 0  # as the exchange last reported it (or our own count)
    exchange_used_weight: int = 0


def reduces_position(intent: OrderIntent, context: RiskContext) -> bool:
    return intent.side is Side.SELL and 0 < intent.quantity <= context.position_quantity


def check(
    intent: OrderIntent,
    *,
    filters: SymbolFilters,
    limits: RiskLimits,
    context: RiskContext,
    exchange: ExchangeLimits = ExchangeLimits(),
) -> OrderIntent | Refusal:
    """`intent` as it may be sent (rounded to the symbol's grids), or the first reason it may not."""
    reducing = reduces_position(intent, context)
    if context.kill_switch is KillSwitchState.HALTED:
        return Refusal(HALTED, "the kill switch is HALTED: no new orders")
    if context.kill_switch is KillSwitchState.REDUCING and not reducing:
        return Refusal(REDUCING, "the kill switch is REDUCING: only orders that reduce a position")
    if not context.symbol_trading:
        return Refusal(SYMBOL_NOT_TRADING, f"{intent.symbol} is not trading on the exchange")

    conformed = conform(intent, filters)
    if isinstance(conformed, Refusal):
        return conformed
    intent = conformed
    notional = intent.notional

    if intent.side is Side.BUY:
        if context.position_value + notional > limits.max_position_per_symbol:
            return Refusal(
                MAX_POSITION_SYMBOL,
                f"{intent.symbol} position would be {_money(context.position_value + notional)}, above "
                f"the limit {limits.max_position_per_symbol}",
            )
        if context.total_exposure + notional > limits.max_position_total:
            return Refusal(
                MAX_POSITION_TOTAL,
                f"total exposure would be {_money(context.total_exposure + notional)}, above the limit "
                f"{limits.max_position_total}",
            )
        needed = notional * (1 + context.taker_fee_bps / 10_000)
        if needed > context.free_quote:
            return Refusal(
                INSUFFICIENT_BALANCE,
                f"buying {intent.quantity} {intent.symbol} needs {_money(needed)} quote, "
                f"{_money(context.free_quote)} is free",
            )
    else:
        if context.position_quantity <= 0:
            return Refusal(NOTHING_TO_SELL, f"no {intent.symbol} position to sell")
        if intent.quantity > context.free_base:
            return Refusal(
                INSUFFICIENT_BALANCE,
                f"selling {intent.quantity} {intent.symbol} but only {context.free_base} is free",
            )

    if not reducing:
        cooldown = _cooldown(context, limits)
        if cooldown is not None:
            return cooldown
        rate = _rule_rate(context, limits)
        if rate is not None:
            return rate

    recent_orders = max(
        context.exchange_orders_10s,
        sum(1 for t in context.order_times if t > context.now_ms - _TEN_SECONDS_MS),
    )
    if recent_orders + 1 > int(exchange.orders_per_10s * exchange.headroom):
        return Refusal(
            EXCHANGE_ORDER_LIMIT,
            f"{recent_orders} orders in the last 10 s; the exchange allows {exchange.orders_per_10s} "
            f"and we keep {round((1 - exchange.headroom) * 100)} % in reserve",
        )
    if context.exchange_used_weight >= int(exchange.weight_per_minute * exchange.headroom):
        return Refusal(
            EXCHANGE_WEIGHT_LIMIT,
            f"request weight {context.exchange_used_weight} used this minute; the exchange allows "
            f"{exchange.weight_per_minute}",
        )
    return intent


def _cooldown(context: RiskContext, limits: RiskLimits) -> Refusal | None:
    now = context.now_ms
    for last, seconds, reason, what in (
        (context.last_trade_ms, limits.after_trade_s, COOLDOWN_TRADE, "any trade"),
        (context.last_loss_ms, limits.after_loss_s, COOLDOWN_LOSS, "a losing trade"),
        (context.last_symbol_trade_ms, limits.per_symbol_s, COOLDOWN_SYMBOL, "a trade in this symbol"),
    ):
        if last is not None and seconds and now < last + seconds * 1000:
            wait = (last + seconds * 1000 - now) / 1000
            return Refusal(reason, f"cooling down {seconds} s after {what}: {wait:.1f} s left")
    return None


def _rule_rate(context: RiskContext, limits: RiskLimits) -> Refusal | None:
    since = context.now_ms - _MINUTE_MS
    per_symbol = sum(1 for t in context.symbol_order_times if t > since)
    if per_symbol >= limits.per_symbol_per_minute:
        return Refusal(
            RATE_SYMBOL,
            f"{per_symbol} orders for this symbol in the last minute (limit {limits.per_symbol_per_minute})",
        )
    total = sum(1 for t in context.order_times if t > since)
    if total >= limits.global_per_minute:
        return Refusal(RATE_GLOBAL, f"{total} orders in the last minute (limit {limits.global_per_minute})")
    return None


def entry_quote_amount(
    *,
    sizing_quote: Decimal,
    limits: RiskLimits,
    position_value: Decimal,
    total_exposure: Decimal,
    free_quote: Decimal | None = None,
    taker_fee_bps: Decimal = Decimal(0),
) -> Decimal:
    """How much quote an entry spends: what the rule asks for, cut to the room left under the
    position limits and, when `free_quote` is given, to what the free balance pays with its fee
    (never below zero)."""
    room = min(
        limits.max_position_per_symbol - position_value,
        limits.max_position_total - total_exposure,
    )
    if free_quote is not None:
        room = min(room, free_quote / (1 + taker_fee_bps / 10_000))
    return max(Decimal(0), min(sizing_quote, room))


def _money(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01')):f}" if value.is_finite() else str(value)
