"""Risk checks (`trading.core.risk`): each refusal, the order they are made in, that getting out
of a position is never held back by cooldowns or the rule's rate limits, that the exchange's own
limits hold for everyone, and how an entry's quote amount is cut to the room left."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading.core import risk
from trading.core.filters import BELOW_MIN_NOTIONAL, violations
from trading.core.risk import ExchangeLimits, RiskContext, RiskLimits, check, entry_quote_amount
from trading.core.types import KillSwitchState, OrderIntent, OrderType, Refusal, Side, SymbolFilters

NOW = 1_767_225_600_000
FILTERS = SymbolFilters(
    tick_size=Decimal("0.01"),
    step_size=Decimal("0.001"),
    min_qty=Decimal("0.001"),
    max_qty=None,
    min_notional=Decimal(5),
)
LIMITS = RiskLimits(max_position_per_symbol=Decimal(500), max_position_total=Decimal(1000))
FLAT = RiskContext(
    now_ms=NOW,
    kill_switch=KillSwitchState.ACTIVE,
    symbol_trading=True,
    position_quantity=Decimal(0),
    position_value=Decimal(0),
    total_exposure=Decimal(0),
    free_quote=Decimal(10_000),
    free_base=Decimal(0),
)
# Holding 2 at 100: a sell of up to 2 reduces the position.
HOLDING = replace(
    FLAT,
    position_quantity=Decimal(2),
    position_value=Decimal(200),
    total_exposure=Decimal(200),
    free_base=Decimal(2),
)
BINANCE = ExchangeLimits()
COOLING = RiskLimits(
    max_position_per_symbol=Decimal(500),
    max_position_total=Decimal(1000),
    after_trade_s=60,
    after_loss_s=300,
    per_symbol_s=120,
)


def buy(quantity: str = "1", price: str = "100") -> OrderIntent:
    return OrderIntent("oas-1", "BTCUSDT", Side.BUY, OrderType.MARKET, Decimal(quantity), Decimal(price))


def sell(quantity: str = "1", price: str = "100") -> OrderIntent:
    return OrderIntent("oas-1", "BTCUSDT", Side.SELL, OrderType.MARKET, Decimal(quantity), Decimal(price))


def run(
    intent: OrderIntent,
    context: RiskContext = FLAT,
    limits: RiskLimits = LIMITS,
    exchange: ExchangeLimits = BINANCE,
) -> OrderIntent | Refusal:
    return check(intent, filters=FILTERS, limits=limits, context=context, exchange=exchange)


def reason(result: OrderIntent | Refusal) -> str:
    assert isinstance(result, Refusal), f"expected a refusal, got {result}"
    return result.reason


def passes(result: OrderIntent | Refusal) -> OrderIntent:
    assert isinstance(result, OrderIntent), f"expected the intent to pass, got {result}"
    return result


def test_a_plain_entry_and_exit_pass_rounded_to_the_grids() -> None:
    assert passes(run(buy("1.23456"))).quantity == Decimal("1.234")
    assert passes(run(sell("2"), HOLDING)).quantity == Decimal(2)


# Kill switch and symbol status -------------------------------------------------------------------


@pytest.mark.parametrize("intent", [buy(), sell("1"), sell("2"), sell("3")])
def test_halted_refuses_everything(intent: OrderIntent) -> None:
    context = replace(HOLDING, kill_switch=KillSwitchState.HALTED, free_base=Decimal(5))
    assert reason(run(intent, context)) == risk.HALTED


def test_reducing_lets_a_reducing_sell_through_and_nothing_else() -> None:
    context = replace(HOLDING, kill_switch=KillSwitchState.REDUCING, free_base=Decimal(5))
    assert passes(run(sell("1"), context)).quantity == Decimal(1)
    assert passes(run(sell("2"), context)).quantity == Decimal(2)
    assert reason(run(buy(), context)) == risk.REDUCING
    assert reason(run(sell("2.001"), context)) == risk.REDUCING  # more than is held: not a reduction
    flat = replace(FLAT, kill_switch=KillSwitchState.REDUCING, free_base=Decimal(5))
    assert reason(run(sell("1"), flat)) == risk.REDUCING


def test_symbol_not_trading_refuses_even_a_reducing_sell() -> None:
    context = replace(HOLDING, symbol_trading=False)
    assert reason(run(buy(), context)) == risk.SYMBOL_NOT_TRADING
    assert reason(run(sell("1"), context)) == risk.SYMBOL_NOT_TRADING


def test_symbol_filter_refusals_come_through() -> None:
    assert reason(run(buy("0.04"))) == BELOW_MIN_NOTIONAL  # 4 USDT


# Position limits and balances --------------------------------------------------------------------


def test_max_position_per_symbol() -> None:
    context = replace(FLAT, position_value=Decimal(450), total_exposure=Decimal(450))
    assert passes(run(buy("0.5"), context))  # 450 + 50 = 500, at the limit
    refusal = run(buy("0.501"), context)
    assert reason(refusal) == risk.MAX_POSITION_SYMBOL
    assert isinstance(refusal, Refusal)
    assert "500.10" in refusal.detail


def test_max_position_total() -> None:
    context = replace(FLAT, position_value=Decimal(0), total_exposure=Decimal(950))
    assert passes(run(buy("0.5"), context))
    assert reason(run(buy("0.501"), context)) == risk.MAX_POSITION_TOTAL


def test_position_limits_do_not_hold_back_a_sell() -> None:
    context = replace(HOLDING, position_value=Decimal(5000), total_exposure=Decimal(50_000))
    assert passes(run(sell("1"), context))


def test_a_buy_needs_the_notional_and_the_taker_fee_free() -> None:
    # 1 x 100 plus 10 bps = 100.1
    assert passes(run(buy(), replace(FLAT, free_quote=Decimal("100.1"))))
    refusal = run(buy(), replace(FLAT, free_quote=Decimal("100.09")))
    assert reason(refusal) == risk.INSUFFICIENT_BALANCE
    assert isinstance(refusal, Refusal)
    assert "100.10" in refusal.detail
    assert "100.09" in refusal.detail
    assert passes(run(buy(), replace(FLAT, free_quote=Decimal(100), taker_fee_bps=Decimal(0))))


def test_nothing_to_sell() -> None:
    assert reason(run(sell("1"), replace(FLAT, free_base=Decimal(5)))) == risk.NOTHING_TO_SELL


def test_a_sell_needs_the_base_free() -> None:
    context = replace(HOLDING, free_base=Decimal("0.5"))  # the rest locked in another order
    assert reason(run(sell("1"), context)) == risk.INSUFFICIENT_BALANCE
    assert passes(run(sell("0.5"), context))


# Cooldowns and the rule's rate limits -------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "seconds", "expected"),
    [
        ("last_trade_ms", 60, risk.COOLDOWN_TRADE),
        ("last_loss_ms", 300, risk.COOLDOWN_LOSS),
        ("last_symbol_trade_ms", 120, risk.COOLDOWN_SYMBOL),
    ],
)
def test_cooldowns(field: str, seconds: int, expected: str) -> None:
    def last(ms: int) -> RiskContext:
        changes: dict[str, Any] = {field: ms}
        return replace(FLAT, **changes)

    during = last(NOW - seconds * 1000 + 1)
    refusal = run(buy(), during, COOLING)
    assert reason(refusal) == expected
    assert isinstance(refusal, Refusal)
    assert f"{seconds} s" in refusal.detail
    assert passes(run(buy(), last(NOW - seconds * 1000), COOLING))
    assert passes(run(buy(), during, LIMITS))  # no cooldown configured


def test_cooldowns_hold_back_a_sell_that_is_not_a_reduction() -> None:
    # Selling more than the book holds (base bought elsewhere) is not getting out.
    context = replace(HOLDING, free_base=Decimal(5), last_trade_ms=NOW - 1000)
    assert reason(run(sell("3"), context, COOLING)) == risk.COOLDOWN_TRADE


def test_rule_rate_limit_per_symbol() -> None:
    context = replace(FLAT, symbol_order_times=[NOW - 59_999, NOW - 1000], order_times=[NOW - 1000])
    assert reason(run(buy(), context)) == risk.RATE_SYMBOL
    # An order a whole minute old no longer counts.
    assert passes(run(buy(), replace(context, symbol_order_times=[NOW - 60_000, NOW - 1000])))


def test_rule_rate_limit_global() -> None:
    context = replace(FLAT, order_times=[NOW - 50_000 - i for i in range(30)])
    assert reason(run(buy(), context)) == risk.RATE_GLOBAL
    assert passes(run(buy(), replace(context, order_times=context.order_times[:29])))


def test_a_reducing_sell_ignores_cooldowns_and_the_rules_rate_limits() -> None:
    context = replace(
        HOLDING,
        last_trade_ms=NOW - 1,
        last_loss_ms=NOW - 1,
        last_symbol_trade_ms=NOW - 1,
        symbol_order_times=[NOW - 1000] * 5,
        order_times=[NOW - 30_000] * 35,
    )
    assert reason(run(buy(), context, COOLING)) == risk.COOLDOWN_TRADE
    assert reason(run(buy(), context)) == risk.RATE_SYMBOL
    assert passes(run(sell("2"), context, COOLING))


# The exchange's limits apply to everyone ----------------------------------------------------------


@pytest.mark.parametrize("intent_context", [(buy(), FLAT), (sell("2"), HOLDING)], ids=["entry", "exit"])
def test_exchange_order_count_limit_keeps_headroom(intent_context: tuple[OrderIntent, RiskContext]) -> None:
    intent, context = intent_context
    # 50 per 10 s with 20 % headroom: the 40th order is the last one we send.
    assert passes(run(intent, replace(context, exchange_orders_10s=39)))
    refusal = run(intent, replace(context, exchange_orders_10s=40))
    assert reason(refusal) == risk.EXCHANGE_ORDER_LIMIT
    assert isinstance(refusal, Refusal)
    assert "20 %" in refusal.detail
    # Our own count of the last 10 s counts when the exchange's is lower; older orders do not.
    own = replace(context, order_times=[NOW - 9_999] * 40)
    assert reason(run(intent, own, replace(LIMITS, global_per_minute=100))) == risk.EXCHANGE_ORDER_LIMIT
    older = replace(context, order_times=[NOW - 10_000] * 40)
    assert passes(run(intent, older, replace(LIMITS, global_per_minute=100)))
    assert passes(
        run(intent, replace(context, exchange_orders_10s=40), exchange=ExchangeLimits(headroom=1.0))
    )


@pytest.mark.parametrize("intent_context", [(buy(), FLAT), (sell("2"), HOLDING)], ids=["entry", "exit"])
def test_exchange_weight_limit(intent_context: tuple[OrderIntent, RiskContext]) -> None:
    intent, context = intent_context
    assert passes(run(intent, replace(context, exchange_used_weight=4799)))
    assert reason(run(intent, replace(context, exchange_used_weight=4800))) == risk.EXCHANGE_WEIGHT_LIMIT


def test_exchange_limits_hold_in_reducing_mode() -> None:
    context = replace(HOLDING, kill_switch=KillSwitchState.REDUCING, exchange_orders_10s=45)
    assert reason(run(sell("1"), context)) == risk.EXCHANGE_ORDER_LIMIT


# Order of the checks ------------------------------------------------------------------------------


def test_the_first_failing_check_is_the_reason_given() -> None:
    """Each context fails its own check and every later one; the documented order decides."""
    everything_wrong = replace(
        FLAT,
        kill_switch=KillSwitchState.HALTED,
        symbol_trading=False,
        position_value=Decimal(1000),
        total_exposure=Decimal(2000),
        free_quote=Decimal(0),
        last_trade_ms=NOW,
        symbol_order_times=[NOW] * 10,
        order_times=[NOW] * 100,
        exchange_orders_10s=100,
        exchange_used_weight=10_000,
    )
    steps: list[tuple[dict[str, object], str]] = [
        ({}, risk.HALTED),
        ({"kill_switch": KillSwitchState.REDUCING}, risk.REDUCING),
        ({"kill_switch": KillSwitchState.ACTIVE}, risk.SYMBOL_NOT_TRADING),
        ({"symbol_trading": True}, risk.MAX_POSITION_SYMBOL),
        ({"position_value": Decimal(0)}, risk.MAX_POSITION_TOTAL),
        ({"total_exposure": Decimal(0)}, risk.INSUFFICIENT_BALANCE),
        ({"free_quote": Decimal(10_000)}, risk.COOLDOWN_TRADE),
        ({"last_trade_ms": None}, risk.RATE_SYMBOL),
        ({"symbol_order_times": ()}, risk.RATE_GLOBAL),
        ({"order_times": ()}, risk.EXCHANGE_ORDER_LIMIT),
        ({"exchange_orders_10s": 0}, risk.EXCHANGE_WEIGHT_LIMIT),
    ]
    context = everything_wrong
    for change, expected in steps:
        context = replace(context, **change)  # type: ignore[arg-type]
        assert reason(run(buy(), context, COOLING)) == expected, change
    # Filters come between the symbol status and the position limits.
    assert reason(
        run(buy("0.04"), replace(everything_wrong, kill_switch=KillSwitchState.ACTIVE, symbol_trading=True))
    ) == (BELOW_MIN_NOTIONAL)
    assert passes(run(buy(), replace(context, exchange_used_weight=0), COOLING))


@settings(max_examples=300, deadline=None)
@given(
    side=st.sampled_from(list(Side)),
    quantity=st.integers(1, 10**6).map(lambda n: Decimal(n).scaleb(-4)),
    price=st.integers(1, 10**7).map(lambda n: Decimal(n).scaleb(-2)),
    held=st.integers(0, 10**6).map(lambda n: Decimal(n).scaleb(-4)),
    state=st.sampled_from(list(KillSwitchState)),
    free_quote=st.integers(0, 10**6).map(Decimal),
)
def test_whatever_passes_is_within_the_filters_limits_and_balance(
    side: Side, quantity: Decimal, price: Decimal, held: Decimal, state: KillSwitchState, free_quote: Decimal
) -> None:
    intent = OrderIntent("oas-1", "BTCUSDT", side, OrderType.MARKET, quantity, price)
    context = replace(
        FLAT,
        kill_switch=state,
        position_quantity=held,
        position_value=held * price,
        total_exposure=held * price,
        free_quote=free_quote,
        free_base=held,
    )
    result = run(intent, context)
    if isinstance(result, Refusal):
        return
    assert violations(result, FILTERS) == []
    assert state is not KillSwitchState.HALTED
    if side is Side.BUY:
        assert state is KillSwitchState.ACTIVE
        assert context.position_value + result.notional <= LIMITS.max_position_per_symbol
        assert result.notional * Decimal("1.001") <= free_quote
    else:
        assert 0 < result.quantity <= held


# Sizing an entry ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "100"),  # room enough: what the rule asks for
        ({"position_value": Decimal(450)}, "50"),  # cut to the symbol's room
        ({"total_exposure": Decimal(920)}, "80"),  # cut to the total room
        ({"position_value": Decimal(600)}, "0"),  # over the limit already: never negative
        ({"free_quote": Decimal("60.06"), "taker_fee_bps": Decimal(10)}, "60"),  # what 60.06 pays with fee
        ({"free_quote": Decimal(60)}, "60"),
        ({"free_quote": Decimal(0)}, "0"),
    ],
)
def test_entry_quote_amount(kwargs: dict[str, Decimal], expected: str) -> None:
    arguments: dict[str, Decimal] = {"position_value": Decimal(0), "total_exposure": Decimal(0)} | kwargs
    amount = entry_quote_amount(sizing_quote=Decimal(100), limits=LIMITS, **arguments)
    assert amount == Decimal(expected)
