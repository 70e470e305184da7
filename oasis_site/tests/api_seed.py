"""A database with a little of everything the REST API serves, written through the services
where they exist (candles, rules, the kill switch, a backtest) and as rows where the execution
loop would write them (signals, orders, fills, positions, gaps)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from marketdata.models import Gap, Symbol
from marketdata.tests.api_seed import START, seed_market
from rules.models import RuleConfig, Signal
from rules.services import rule_config_create, rule_version_activate
from trading.backtests import BacktestRequest, backtest_run
from trading.core.types import KillSwitchState
from trading.killswitch import killswitch_engage
from trading.models import BacktestRun, Fill, Order, Position, SignalDecision

SPEC = {
    "timeframes": ["1m"],
    "indicators": {
        "fast": {"kind": "ema", "period": 5},
        "slow": {"kind": "ema", "period": 13},
    },
    "entry": "fast crosses_above slow",
    "exit": "fast crosses_below slow",
    "sizing": {"quote_amount": "100"},
    "limits": {"max_position_per_symbol": "500", "max_position_total": "5000"},
}


@dataclass(frozen=True)
class Seeded:
    symbol: Symbol
    rule: RuleConfig
    order: Order
    backtest: BacktestRun
    gap: Gap
    candles: int


def seed(*, candles: int = 400) -> Seeded:
    symbol, gap = seed_market(candles=candles)
    config = rule_config_create(
        name="crossing", description="EMA 5/13", symbols=["BTCUSDT"], spec=SPEC, author="system:test"
    )
    version = config.versions.get(number=1)
    rule_version_activate(version=version, actor="system:test")
    config.refresh_from_db()
    signals = [
        Signal.objects.create(
            symbol=symbol,
            timeframe="1m",
            open_time=START + timedelta(minutes=100 + index),
            rule_version=version,
            action=action,
            indicators={"fast": 20001.5, "slow": 20000.25},
            computed_at=START + timedelta(minutes=101 + index),
        )
        for index, action in enumerate(["enter", "exit", "enter"])
    ]
    moment = START + timedelta(minutes=101)
    order = Order.objects.create(
        client_order_id="0b6f8c1e-6d0e-4f4a-9a61-6c1b8f0c0001",
        mode="dry_run",
        exchange="sim",
        symbol=symbol,
        side="buy",
        type="market",
        status="filled",
        quantity=Decimal("0.00500000"),
        requested_quantity=Decimal("0.005012345"),
        reference_price=Decimal("20001.50"),
        filled_quantity=Decimal("0.00500000"),
        average_price=Decimal("20011.50000000"),
        signal=signals[0],
        rule_version=version,
        created_at=moment,
        submitted_at=moment,
        acknowledged_at=moment,
        updated_at=moment,
    )
    SignalDecision.objects.create(signal=signals[0], mode="dry_run", outcome="ordered", decided_at=moment)
    SignalDecision.objects.create(
        signal=signals[1], mode="dry_run", outcome="skipped", reason="nothing_held", decided_at=moment
    )
    Fill.objects.create(
        order=order,
        trade_id="dry-1",
        price=Decimal("20011.50000000"),
        quantity=Decimal("0.00500000"),
        fee=Decimal("0.10005750"),
        fee_asset="USDT",
        executed_at=moment,
        recorded_at=moment,
    )
    Position.objects.create(
        mode="dry_run",
        symbol=symbol,
        quantity=Decimal("0.00500000"),
        cost=Decimal("100.05750000"),
        average_price=Decimal("20011.5"),
        mark_price=Decimal("20100.00"),
        unrealized_pnl=Decimal("0.44250000"),
        updated_at=moment,
    )
    run, _ = backtest_run(
        request=BacktestRequest(
            rule="crossing", since=START + timedelta(minutes=60), until=START + timedelta(minutes=candles - 1)
        ),
        actor="system:test",
    )
    killswitch_engage(state=KillSwitchState.REDUCING, reason="seeded for the API tests", actor="system:test")
    return Seeded(symbol=symbol, rule=config, order=order, backtest=run, gap=gap, candles=candles)
