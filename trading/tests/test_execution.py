"""The execution loop on signals it is handed: what becomes an order, what is refused and why
(named, audited, counted, recorded on the row), and that nothing escapes the loop."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.cache import cache
from django.test import TestCase
from django.utils import timezone
from prometheus_client import REGISTRY

from audit.models import Alert, AuditEvent
from marketdata.models import Candle, Symbol
from marketdata.tests.factories import SymbolFactory
from rules.models import RuleConfig, Signal
from rules.services import rule_config_create, rule_version_activate, rule_version_create
from trading.brokers.dry_run import DryRunBroker
from trading.core.fills import FillModel
from trading.core.risk import ExchangeLimits
from trading.core.types import KillSwitchState, OrderIntent, OrderStatus, OrderType, Side
from trading.execution import ExecutionConfig, ExecutionLoop
from trading.killswitch import killswitch_engage, killswitch_release, killswitch_view
from trading.models import EquitySnapshot, Order, Position, SignalDecision
from trading.runner import paper_account_open

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
SPEC: dict[str, Any] = {
    "timeframes": ["1m"],
    "entry": "close > open",
    "exit": "close < open",
    "sizing": {"quote_amount": "100"},
    "limits": {"max_position_per_symbol": "500", "max_position_total": "1000"},
}
PRICE_FILTERS = [
    {"filterType": "PRICE_FILTER", "minPrice": "1.00", "maxPrice": "1000000.00", "tickSize": "0.01"},
    {"filterType": "LOT_SIZE", "minQty": "0.00001", "maxQty": "9000", "stepSize": "0.00001"},
    {"filterType": "NOTIONAL", "minNotional": "5.00", "maxNotional": "9000000.00"},
]


@dataclass
class Desk:
    loop: ExecutionLoop
    clock: list[float]
    btc: Symbol
    eth: Symbol
    config: RuleConfig

    def candle(self, minute: int, close: str = "50000.00", symbol: Symbol | None = None) -> Candle:
        price = Decimal(close)
        candle, _ = Candle.objects.update_or_create(
            symbol=symbol or self.btc,
            timeframe="1m",
            open_time=T0 + timedelta(minutes=minute),
            defaults=self._fields(minute, price),
        )
        return candle

    @staticmethod
    def _fields(minute: int, price: Decimal) -> dict[str, Any]:
        return {
            "open": price,
            "high": price,
            "low": price,
            "close": price,
            "volume": Decimal(1),
            "quote_volume": price,
            "trade_count": 1,
            "is_closed": True,
            "source": "ws",
            "ingested_at": T0 + timedelta(minutes=minute + 1),
        }

    def signal(self, action: str, minute: int = 0, symbol: Symbol | None = None) -> Signal:
        """A signal on minute `minute`'s close; the clock moves to just after that close."""
        symbol = symbol or self.btc
        candle = Candle.objects.filter(symbol=symbol, open_time=T0 + timedelta(minutes=minute)).first()
        if candle is None:
            candle = self.candle(minute, symbol=symbol)
        # Orders fill at the open of the next candle: in these replays it is there already,
        # opening where the signal's candle closed.
        if not Candle.objects.filter(symbol=symbol, open_time=T0 + timedelta(minutes=minute + 1)).exists():
            self.candle(minute + 1, close=f"{candle.close:f}", symbol=symbol)
        self.clock[0] = (T0 + timedelta(minutes=minute + 1, seconds=1)).timestamp()
        self.config.refresh_from_db()
        assert self.config.active_version is not None
        return Signal.objects.create(
            symbol=symbol,
            timeframe="1m",
            open_time=T0 + timedelta(minutes=minute),
            rule_version=self.config.active_version,
            action=action,
            indicators={},
            computed_at=timezone.now(),
        )

    def at(self, minute: int) -> None:
        """The clock one second after minute `minute` began (the candle before it just closed)."""
        self.clock[0] = (T0 + timedelta(minutes=minute, seconds=1)).timestamp()

    def settle(self) -> None:
        """A minute passes (the candle orders fill on closes) and the loop runs."""
        self.clock[0] += 60
        self.run()

    def run(self) -> None:
        # Metrics and broadcasts go out after commit; a test's transaction never commits.
        with TestCase.captureOnCommitCallbacks(execute=True):
            self.loop.cycle()


def make_desk(spec: dict[str, Any] | None = None, *, balance: str = "1000") -> Desk:
    cache.clear()
    btc = SymbolFactory.create(symbol="BTCUSDT", base="BTC", filters=PRICE_FILTERS)
    eth = SymbolFactory.create(symbol="ETHUSDT", base="ETH", filters=PRICE_FILTERS)
    config = rule_config_create(
        name="desk", description="", symbols=["BTCUSDT", "ETHUSDT"], spec=spec or SPEC, author="system:test"
    )
    rule_version_activate(version=config.versions.get(), actor="system:test")
    paper_account_open(quote_asset="USDT", amount=Decimal(balance))
    clock = [T0.timestamp()]
    loop = ExecutionLoop(
        broker_factory=lambda _loop: DryRunBroker(
            exchange="sim", fill_model=FillModel(), clock_ms=lambda: int(clock[0] * 1000)
        ),
        config=ExecutionConfig(mode="dry_run", exchange="sim", tripwire_every_s=10**9),
        clock=lambda: clock[0],
    )
    return Desk(loop=loop, clock=clock, btc=btc, eth=eth, config=config)


@pytest.fixture
def desk() -> Desk:
    return make_desk()


def rejections(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("oasis_order_rejections_total", {"mode": "dry_run", "reason": reason})
        or 0.0
    )


def only_order() -> Order:
    (order,) = Order.objects.all()
    return order


def assert_refused(reason: str, before: float) -> Order:
    order = only_order()
    assert order.status == OrderStatus.REJECTED
    assert order.reject_reason == reason
    assert order.reject_detail
    assert AuditEvent.objects.filter(action="trading.order.rejected", object_id=str(order.pk)).exists()
    assert rejections(reason) == before + 1
    return order


def test_enter_then_exit_fills_and_closes_the_position(desk: Desk) -> None:
    desk.signal("enter", minute=0)
    desk.run()
    assert only_order().status == OrderStatus.SUBMITTED  # fills on the next candle, once it is over
    desk.settle()
    buy = only_order()
    assert (buy.side, buy.status) == ("buy", OrderStatus.FILLED)
    assert buy.quantity == Decimal("0.00200")  # 100 USDT at 50,000, on the 0.00001 step
    desk.candle(5, close="51000.00")
    desk.signal("exit", minute=5)
    desk.run()
    desk.settle()
    sell = Order.objects.exclude(pk=buy.pk).get()
    assert (sell.side, sell.status, sell.quantity) == ("sell", OrderStatus.FILLED, buy.quantity)
    position = Position.objects.get(mode="dry_run", symbol=desk.btc)
    assert position.quantity == 0
    assert sell.average_price is not None
    assert buy.average_price is not None
    assert position.realized_pnl == (sell.average_price - buy.average_price) * buy.quantity
    assert position.realized_pnl > 0


def test_the_same_signal_never_makes_a_second_order(desk: Desk) -> None:
    desk.signal("enter")
    desk.run()
    desk.run()
    desk.loop.start()  # a restart reconciles; it must not resend either
    desk.run()
    assert Order.objects.count() == 1
    assert SignalDecision.objects.count() == 1


def test_exit_with_nothing_held_and_entry_while_in_are_skipped(desk: Desk) -> None:
    for action, minute in (("exit", 0), ("enter", 1), ("enter", 2)):
        desk.signal(action, minute=minute)
        desk.run()
    reasons = dict(SignalDecision.objects.values_list("signal__open_time__minute", "reason"))
    assert reasons == {0: "no_position", 1: "", 2: "position_open"}
    assert Order.objects.count() == 1


def test_a_stale_signal_is_not_acted_on(desk: Desk) -> None:
    desk.signal("enter", minute=0)
    desk.clock[0] += 600  # the loop was down for ten minutes
    desk.run()
    assert not Order.objects.exists()
    assert SignalDecision.objects.get().reason == "signal_stale"


def test_a_signal_from_a_version_no_longer_active_is_skipped(desk: Desk) -> None:
    signal = desk.signal("enter")
    version = rule_version_create(
        config=desk.config, spec={**SPEC, "entry": "close > high"}, symbols=["BTCUSDT"], author="system:test"
    )
    rule_version_activate(version=version, actor="system:test")
    desk.run()
    assert not Order.objects.exists()
    assert SignalDecision.objects.get(signal=signal).reason == "version_inactive"


def test_a_halted_symbol_is_refused_by_name(desk: Desk) -> None:
    Symbol.objects.filter(pk=desk.btc.pk).update(status="BREAK")
    before = rejections("symbol_not_trading")
    desk.signal("enter")
    desk.run()
    order = assert_refused("symbol_not_trading", before)
    assert "BTCUSDT" in order.reject_detail


def test_a_symbol_of_another_exchange_is_refused_as_unknown(desk: Desk) -> None:
    other = SymbolFactory.create(exchange="binance", symbol="BTCUSDT", base="BTC")
    before = rejections("unknown_symbol")
    desk.signal("enter", symbol=other)
    desk.run()
    assert_refused("unknown_symbol", before)


def test_a_quantity_that_rounds_to_zero_is_refused() -> None:
    desk = make_desk({**SPEC, "sizing": {"quote_amount": "0.1"}})
    before = rejections("quantity_rounds_to_zero")
    desk.signal("enter")
    desk.run()
    order = assert_refused("quantity_rounds_to_zero", before)
    assert order.requested_quantity == Decimal("0.1") / Decimal("50000.00")


def test_a_limit_price_outside_the_price_filter_is_refused(desk: Desk) -> None:
    desk.candle(0)
    before = rejections("price_out_of_range")
    desk.clock[0] = (T0 + timedelta(minutes=1)).timestamp()
    desk.loop.start()
    spec = desk.loop._spec(desk.config.versions.get())
    intent = OrderIntent(
        "oas-manual-1",
        "BTCUSDT",
        Side.BUY,
        OrderType.LIMIT,
        Decimal("0.001"),
        Decimal("50000"),
        Decimal("0.5"),
    )
    with TestCase.captureOnCommitCallbacks(execute=True):
        order = desk.loop.execute(intent, symbol=desk.btc, spec=spec, requested=intent.quantity, signal=None)
    assert order.reject_reason == "price_out_of_range"
    assert "0.5" in order.reject_detail
    assert "1.00" in order.reject_detail
    assert_refused("price_out_of_range", before)


def test_a_balance_too_small_is_refused() -> None:
    desk = make_desk(balance="50")
    before = rejections("insufficient_balance")
    desk.signal("enter")
    desk.run()
    order = assert_refused("insufficient_balance", before)
    assert "50" in order.reject_detail


def test_the_kill_switch_halts_entries_and_reducing_lets_only_exits_through(desk: Desk) -> None:
    desk.signal("enter", minute=0)
    desk.run()
    killswitch_engage(state=KillSwitchState.REDUCING, reason="test", actor="system:test")
    desk.signal("enter", minute=1)  # skipped: in a position already
    other = desk.eth
    desk.signal("enter", minute=1, symbol=other)
    desk.run()
    assert Order.objects.get(symbol=other).reject_reason == "kill_switch_reducing"
    desk.signal("exit", minute=2)
    desk.run()
    desk.settle()
    assert Order.objects.get(symbol=desk.btc, side="sell").status == OrderStatus.FILLED
    killswitch_engage(state=KillSwitchState.HALTED, reason="test", actor="system:test")
    desk.signal("enter", minute=3)
    desk.run()
    assert Order.objects.filter(symbol=desk.btc).order_by("-id").first().reject_reason == "kill_switch_halted"  # type: ignore[union-attr]


def test_cooldown_after_a_trade_refuses_the_next_entry() -> None:
    desk = make_desk({**SPEC, "cooldowns": {"after_trade_s": 600}})
    desk.signal("enter", minute=0)
    desk.run()
    desk.signal("exit", minute=1)
    desk.run()
    desk.signal("enter", minute=2)
    desk.run()
    last = Order.objects.order_by("-id").first()
    assert last is not None
    assert last.reject_reason == "cooldown_after_trade"
    assert "600 s" in last.reject_detail


def test_a_broker_that_blows_up_does_not_stop_the_loop(desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(intent: OrderIntent) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(desk.loop.broker, "submit", explode)
    desk.signal("enter", minute=0)
    other = desk.eth
    desk.signal("enter", minute=0, symbol=other)
    desk.run()  # no exception
    orders = list(Order.objects.order_by("id"))
    assert [o.status for o in orders] == [OrderStatus.REJECTED, OrderStatus.REJECTED]
    assert {o.reject_reason for o in orders} == {"internal_error"}
    assert SignalDecision.objects.count() == 2


def test_a_stop_loss_sells_the_position_once() -> None:
    desk = make_desk({**SPEC, "stop_loss_pct": "2", "take_profit_pct": "5"})
    desk.signal("enter", minute=0)
    desk.run()
    desk.settle()  # bought at 50,000 slipped: 50,025 on average
    desk.candle(2, close="49100.00")  # -1.85 %: holds
    desk.at(3)
    desk.run()
    assert Order.objects.count() == 1
    desk.candle(3, close="48900.00")  # -2.25 %: out
    desk.at(4)
    desk.run()
    assert Order.objects.get(side="sell").status == OrderStatus.SUBMITTED  # waits for the next open
    desk.candle(4, close="48800.00")
    desk.at(5)
    desk.run()
    desk.run()
    sell = Order.objects.get(side="sell")
    assert sell.status == OrderStatus.FILLED
    assert sell.signal is None
    assert sell.rule_version == desk.config.active_version
    assert Position.objects.get(mode="dry_run", symbol=desk.btc).quantity == 0
    assert Order.objects.count() == 2


def test_a_take_profit_sells_and_nothing_protective_goes_out_while_halted() -> None:
    desk = make_desk({**SPEC, "take_profit_pct": "3"})
    desk.signal("enter", minute=0)
    desk.run()
    desk.settle()  # bought at 50,025 on average
    killswitch_engage(state=KillSwitchState.HALTED, reason="test", actor="system:test")
    desk.candle(2, close="51600.00")  # +3.15 %
    desk.at(3)
    desk.run()
    assert Order.objects.count() == 1
    killswitch_engage(state=KillSwitchState.REDUCING, reason="test", actor="system:test")
    desk.run()
    desk.candle(3, close="51600.00")
    desk.settle()
    sell = Order.objects.get(side="sell")
    assert sell.status == OrderStatus.FILLED
    assert sell.average_price is not None
    assert sell.average_price < Decimal("51600.00")  # slippage, against us


def test_the_exchanges_order_limit_makes_signals_wait_not_fail() -> None:
    desk = make_desk({**SPEC, "order_rate_limits": {"per_symbol_per_minute": 5, "global_per_minute": 100}})
    desk.loop.config.exchange_limits = ExchangeLimits(orders_per_10s=5, headroom=0.8)  # 4 per 10 s
    symbols = [desk.btc, desk.eth] + [
        SymbolFactory.create(symbol=f"S{i}USDT", base=f"S{i}", filters=PRICE_FILTERS) for i in range(4)
    ]
    for symbol in symbols:
        desk.signal("enter", minute=0, symbol=symbol)
    desk.run()
    assert Order.objects.count() == 4
    assert not Order.objects.filter(status=OrderStatus.REJECTED).exists()
    assert SignalDecision.objects.count() == 4  # the other two wait, undecided
    desk.run()
    assert Order.objects.count() == 4
    desk.clock[0] += 11
    desk.run()
    assert Order.objects.count() == 6
    desk.settle()
    assert set(Order.objects.values_list("status", flat=True)) == {OrderStatus.FILLED}


def test_a_market_order_fills_at_the_next_open_or_expires_without_one(desk: Desk) -> None:
    desk.signal("enter", minute=0)
    Candle.objects.filter(open_time=T0 + timedelta(minutes=1)).delete()  # not closed yet
    desk.run()
    buy = only_order()
    assert buy.status == OrderStatus.SUBMITTED
    desk.candle(1, close="50100.00")
    desk.settle()
    buy.refresh_from_db()
    assert buy.status == OrderStatus.FILLED
    assert buy.average_price == FillModel().slipped_price(Side.BUY, Decimal("50100.00"), desk.btc.tick_size)

    desk.signal("enter", minute=3, symbol=desk.eth)
    Candle.objects.filter(symbol=desk.eth, open_time=T0 + timedelta(minutes=4)).delete()
    desk.run()
    desk.clock[0] += 11 * 60  # no candle for eleven minutes (the feed is down)
    desk.run()
    eth = Order.objects.get(symbol=desk.eth)
    assert eth.status == OrderStatus.EXPIRED
    assert "no 1m candle" in eth.reject_detail


def test_exchange_errors_raise_one_alert_per_kind_counted_while_they_recur(desk: Desk) -> None:
    desk.loop.on_broker_error("network", "connection reset by peer")
    desk.loop.on_broker_error("network", "timed out")
    desk.loop.on_broker_error("rate_limited", "429")
    alerts = {alert.key: alert for alert in Alert.objects.all()}
    assert set(alerts) == {"trading.exchange_error.network", "trading.exchange_error.rate_limited"}
    network = alerts["trading.exchange_error.network"]
    assert (network.count, network.severity, network.detail) == (2, "warning", "timed out")


def _equity(desk: Desk, equity: str, peak: str) -> None:
    EquitySnapshot.objects.create(
        mode="dry_run",
        taken_at=timezone.now(),
        quote_asset="USDT",
        cash=Decimal(equity),
        positions_value=Decimal(0),
        equity=Decimal(equity),
        realized_pnl=Decimal(0),
        unrealized_pnl=Decimal(0),
        fees=Decimal(0),
        peak_equity=Decimal(peak),
        drawdown_pct=(Decimal(peak) - Decimal(equity)) / Decimal(peak) * 100,
    )


def test_a_released_drawdown_trip_counts_the_next_drawdown_from_the_release(desk: Desk) -> None:
    """The default limit is 10 %: 15 % below the peak trips REDUCING. A person's release accepts
    that loss: the next check does not trip again on it, a fall of 10 % from the equity at or
    after the release does."""
    _equity(desk, "1000", "1000")
    _equity(desk, "850", "1000")
    assert "drawdown" in desk.loop.check_tripwires()
    assert killswitch_view().state is KillSwitchState.REDUCING
    killswitch_release(reason="drawdown seen, rule kept", actor="cli:ops")
    _equity(desk, "850", "1000")  # the account's peak is still 1000: 15 % below it
    assert "drawdown" not in desk.loop.check_tripwires()
    _equity(desk, "900", "1000")  # a new high since the release
    _equity(desk, "815", "1000")  # 9.4 % below it: not yet
    assert "drawdown" not in desk.loop.check_tripwires()
    assert killswitch_view().state is KillSwitchState.ACTIVE
    _equity(desk, "805", "1000")  # 10.6 % below 900
    assert "drawdown" in desk.loop.check_tripwires()
    assert killswitch_view().state is KillSwitchState.REDUCING


def test_one_feed_stopping_while_the_others_go_on_is_stale_data_named_by_symbol(desk: Desk) -> None:
    """ETHUSDT's last candle closed 10 minutes ago while BTCUSDT's closed a second ago: the
    stale-data tripwire (limit 120 s by default) halts, naming ETHUSDT."""
    for minute in range(20):
        desk.candle(minute)
    desk.candle(9, symbol=desk.eth)
    desk.at(20)
    assert desk.loop.check_tripwires() == ["stale_data"]
    switch = killswitch_view()
    assert switch.state is KillSwitchState.HALTED
    assert "market data of ETHUSDT is 601 s old" in switch.reason


def test_fresh_feeds_everywhere_are_not_stale(desk: Desk) -> None:
    for minute in range(20):
        desk.candle(minute)
        desk.candle(minute, symbol=desk.eth)
    desk.at(20)
    assert desk.loop.check_tripwires() == []
    assert killswitch_view().state is KillSwitchState.ACTIVE
