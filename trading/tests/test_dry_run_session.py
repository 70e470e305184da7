"""A dry-run session on the simulator, through the live path: candles backfilled from the
simulator over REST, each minute's closes evaluated by the active rule into signals, and the
execution loop (on the candles' clock) turning them into orders, fills, positions and PnL.
Everything must add up: fills against the fill model, positions against fills, balances
against the paper account's start, equity against PnL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command
from waffle.models import Flag

from audit.models import AuditEvent
from audit.selectors import audit_chain_verify
from marketdata.backfill import backfill_range
from marketdata.core.timeframes import Timeframe, ms_from_datetime
from marketdata.ingest.derived import closed_candle_event
from marketdata.models import Candle, Symbol
from marketdata.selectors import candle_as_kline
from marketdata.services import CandleWrite
from marketdata.simulator.config import SimConfig
from marketdata.simulator.server import SimExchangeThread
from marketdata.tests.ingest_harness import sim_in_use
from marketdata.tests.shared_data import REAL_CANDLES_CSV
from rules import evaluation
from rules.engine.spec import parse_spec
from rules.models import Signal
from rules.services import rule_config_create, rule_version_activate
from trading.brokers.dry_run import DryRunBroker
from trading.core import backtest
from trading.core.fills import FillModel
from trading.core.types import OrderStatus, Side
from trading.drift import drift_check
from trading.execution import ExecutionConfig, ExecutionLoop, limits_of
from trading.models import Balance, EquitySnapshot, Fill, Order, Position, SignalDecision
from trading.runner import paper_account_open
from trading.selectors import symbol_filters

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("celery_inline")]

MINUTE = 60_000
START = int(datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp() * 1000)
HISTORY_MINUTES = 600
REPLAY_MINUTES = 240
SYMBOLS = ("BTCUSDT", "ETHUSDT")
SPEC = {
    "timeframes": ["1m"],
    "indicators": {"fast": {"kind": "ema", "period": 3}, "slow": {"kind": "ema", "period": 8}},
    "entry": "fast crosses_above slow",
    "exit": "fast crosses_below slow",
    "sizing": {"quote_amount": "250"},
    "limits": {"max_position_per_symbol": "1000", "max_position_total": "5000"},
}
OPENING_BALANCE = Decimal(10_000)


@pytest.fixture(scope="module")
def running_sim():
    if not REAL_CANDLES_CSV.exists():
        pytest.skip(f"the real candles are not here: {REAL_CANDLES_CSV}")
    config = SimConfig(
        port=0,
        symbols=SYMBOLS,
        start_ms=START,
        history_minutes=HISTORY_MINUTES + 60,
        replay_path=REAL_CANDLES_CSV,
        speed=1.0,
    )
    with SimExchangeThread(config) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_evaluator(monkeypatch):
    """A new evaluator per test: its cache of active rule versions must not outlive a test's
    database."""
    monkeypatch.setattr(evaluation, "_evaluator", None)


@pytest.fixture
def sim(running_sim, settings):
    cache.clear()
    with sim_in_use(running_sim, settings):
        yield running_sim


def replay_session(spec: dict[str, Any] = SPEC) -> datetime:
    """Backfill from the simulator, then replay REPLAY_MINUTES minutes through evaluation and the
    execution loop on the candles' clock. Returns the last replayed candle's open time."""
    first = datetime.fromtimestamp((START - HISTORY_MINUTES * MINUTE) / 1000, tz=UTC)
    last = datetime.fromtimestamp((START - MINUTE) / 1000, tz=UTC)
    for name in SYMBOLS:
        backfill_range(exchange="sim", symbol=name, timeframe="1m", since=first, until=last)
    config = rule_config_create(
        name="ema", description="", symbols=list(SYMBOLS), spec=spec, author="system:test"
    )
    rule_version_activate(version=config.versions.get(), actor="system:test")
    flag = Flag.objects.get(name=config.flag_name)
    flag.everyone = True
    flag.save()
    flag.flush()
    paper_account_open(quote_asset="USDT", amount=OPENING_BALANCE)

    clock = [0.0]
    model = FillModel()
    loop = ExecutionLoop(
        broker_factory=lambda _loop: DryRunBroker(
            exchange="sim", fill_model=model, clock_ms=lambda: int(clock[0] * 1000)
        ),
        config=ExecutionConfig(mode="dry_run", exchange="sim"),
        clock=lambda: clock[0],
    )
    symbols = {s.symbol: s for s in Symbol.objects.filter(exchange="sim", symbol__in=SYMBOLS)}
    replay_from = last - timedelta(minutes=REPLAY_MINUTES - 1)
    by_minute: dict[datetime, list[tuple[Symbol, Candle]]] = {}
    for candle in Candle.objects.filter(timeframe="1m", open_time__gte=replay_from).order_by("open_time"):
        symbol = next(s for s in symbols.values() if s.pk == candle.symbol_id)
        by_minute.setdefault(candle.open_time, []).append((symbol, candle))
    assert len(by_minute) == REPLAY_MINUTES

    clock[0] = replay_from.timestamp()
    loop.start()
    for open_time, closing in sorted(by_minute.items()):
        events = [
            closed_candle_event(
                CandleWrite(s.pk, candle_as_kline(c, symbol=s.symbol), "ws"),
                symbol=s.symbol,
                committed_at=0.0,
            )
            for s, c in closing
        ]
        evaluation.on_candles_closed(events)
        clock[0] = (open_time + timedelta(minutes=1, seconds=1)).timestamp()
        loop.cycle()
    return last


def test_a_dry_run_session_adds_up(sim):
    model = FillModel()
    last = replay_session()
    symbols = {s.symbol: s for s in Symbol.objects.filter(exchange="sim", symbol__in=SYMBOLS)}

    # Every signal was decided once; orders were placed both ways.
    signals = Signal.objects.count()
    assert signals > 10
    assert SignalDecision.objects.count() == signals
    orders = list(Order.objects.select_related("symbol").order_by("id"))
    assert {o.side for o in orders} == {"buy", "sell"}
    assert SignalDecision.objects.filter(outcome="ordered").count() == len(orders)
    filled = [o for o in orders if o.status == OrderStatus.FILLED]
    assert len(filled) >= 4
    # Orders fill on the next candle once it is over: only the last minute's may still wait.
    waiting = [o for o in orders if o.status not in (OrderStatus.FILLED, OrderStatus.REJECTED)]
    assert all(o.status == OrderStatus.SUBMITTED and o.signal and o.signal.open_time == last for o in waiting)

    # Each fill is the fill model's answer to the open of the candle after its signal's (no
    # lookahead: the order is decided on t's close and fills at t+1).
    fees = Decimal(0)
    for order in filled:
        (fill,) = Fill.objects.filter(order=order)
        assert order.signal is not None
        close = Candle.objects.get(
            symbol=order.symbol, timeframe="1m", open_time=order.signal.open_time
        ).close
        assert order.reference_price == close
        after = order.signal.open_time + timedelta(minutes=1)
        next_open = Candle.objects.get(symbol=order.symbol, timeframe="1m", open_time=after).open
        assert fill.price == model.slipped_price(Side(order.side), next_open, order.symbol.tick_size)
        assert fill.executed_at == after
        assert fill.quantity == order.quantity == order.filled_quantity
        assert fill.fee == model.fee(fill.price * fill.quantity, maker=False)
        assert (fill.quantity - order.symbol.min_qty) % order.symbol.step_size == 0
        assert fill.price * fill.quantity >= order.symbol.min_notional
        fees += fill.fee

    # Positions: quantity from the fills; realized PnL from the round trips.
    cash = OPENING_BALANCE
    for name, symbol in symbols.items():
        fills = list(
            Fill.objects.filter(order__symbol=symbol).select_related("order").order_by("executed_at", "id")
        )
        held = Decimal(0)
        cost = Decimal(0)
        realized = Decimal(0)
        for fill in fills:
            notional = fill.price * fill.quantity
            if fill.order.side == "buy":
                held += fill.quantity
                cost += notional
                cash -= notional + fill.fee
            else:
                assert fill.quantity == held, "an exit sells the whole position"
                realized += notional - cost
                held, cost = Decimal(0), Decimal(0)
                cash += notional - fill.fee
        position = Position.objects.filter(mode="dry_run", symbol=symbol).first()
        if not fills:
            continue
        assert position is not None
        assert position.quantity == held, name
        assert position.realized_pnl == realized, name
        assert position.fees == sum((f.fee for f in fills), Decimal(0)), name
        base = Balance.objects.filter(mode="dry_run", asset=symbol.base).first()
        assert (base.free if base else Decimal(0)) == held, name
    assert Balance.objects.get(mode="dry_run", asset="USDT").free == cash

    # Equity = cash + positions at the last close, and its change = net realized + unrealized.
    snapshot = EquitySnapshot.objects.filter(mode="dry_run").order_by("-taken_at", "-id").first()
    assert snapshot is not None
    positions = list(Position.objects.filter(mode="dry_run").select_related("symbol"))
    last_close = {
        p.symbol_id: Candle.objects.filter(symbol=p.symbol, timeframe="1m").latest("open_time").close
        for p in positions
    }
    marked = sum((p.quantity * last_close[p.symbol_id] for p in positions), Decimal(0))
    assert snapshot.cash == cash
    assert snapshot.equity == cash + marked
    realized_net = sum((p.realized_pnl - p.fees for p in positions), Decimal(0))
    unrealized = sum((p.unrealized_pnl for p in positions), Decimal(0))
    assert snapshot.equity - OPENING_BALANCE == realized_net + unrealized
    assert sum((p.fees for p in positions), Decimal(0)) == fees

    # Every order's life is in the audit log, and the chain holds.
    audited = set(
        AuditEvent.objects.filter(action__startswith="trading.order").values_list("object_id", flat=True)
    )
    assert {str(o.pk) for o in orders} <= audited
    assert audit_chain_verify().intact


def engine_inputs(
    spec: dict[str, Any],
) -> tuple[list[backtest.SignalEvent], dict[str, backtest.MarketSymbol], backtest.BacktestSettings]:
    """What the backtest engine gets for the same session: the stored candles and signals."""
    rows = Symbol.objects.filter(exchange="sim", symbol__in=SYMBOLS)
    markets = {
        s.symbol: backtest.MarketSymbol(
            symbol=s.symbol,
            base=s.base,
            quote=s.quote,
            filters=symbol_filters(s),
            minutes=[
                backtest.Minute(ms_from_datetime(t), o, h, low, c)
                for t, o, h, low, c in Candle.objects.filter(symbol=s, timeframe="1m")
                .order_by("open_time")
                .values_list("open_time", "open", "high", "low", "close")
            ],
        )
        for s in rows
    }
    events = [
        backtest.SignalEvent(
            close_ms=ms_from_datetime(signal.open_time) + Timeframe(signal.timeframe).ms,
            symbol=signal.symbol.symbol,
            timeframe=signal.timeframe,
            timeframe_ms=Timeframe(signal.timeframe).ms,
            action=signal.action,
            reference=Candle.objects.get(
                symbol=signal.symbol, timeframe=signal.timeframe, open_time=signal.open_time
            ).close,
            rule_version=signal.rule_version_id,
        )
        for signal in Signal.objects.select_related("symbol")
    ]
    parsed = parse_spec(spec)
    settings = backtest.BacktestSettings(
        exchange="sim",
        limits=limits_of(parsed),
        sizing_quote=parsed.sizing.quote_amount,
        sizing_equity_pct=parsed.sizing.equity_pct,
        fill_model=FillModel(),
        opening_balance=OPENING_BALANCE,
        stop_loss_pct=parsed.stop_loss_pct,
        take_profit_pct=parsed.take_profit_pct,
    )
    return events, markets, settings


@pytest.mark.parametrize(
    "spec",
    [
        SPEC,
        # Sized on equity, with protective exits and a cooldown: every shared decision at work.
        {
            **SPEC,
            "sizing": {"equity_pct": "3"},
            "stop_loss_pct": "0.3",
            "take_profit_pct": "0.4",
            "cooldowns": {"after_loss_s": 300},
        },
    ],
    ids=["quote-sized", "equity-sized-with-stops"],
)
def test_the_backtest_engine_decides_and_fills_as_the_execution_loop_did(sim, spec):
    replay_session(spec)
    events, markets, settings = engine_inputs(spec)
    result = backtest.run(events, symbols=markets, settings=settings)

    def loop_orders() -> list[tuple[object, ...]]:
        rows = Order.objects.select_related("symbol").order_by("client_order_id")
        return [
            (o.client_order_id, o.symbol.symbol, o.side, o.quantity, o.status, o.reject_reason) for o in rows
        ]

    def engine_orders() -> list[tuple[object, ...]]:
        rows = sorted(result.orders, key=lambda o: o.client_order_id)
        return [
            (o.client_order_id, o.symbol, o.side.value, o.quantity, o.status.value, o.reject_reason)
            for o in rows
        ]

    assert len(loop_orders()) >= 10
    assert engine_orders() == loop_orders()
    loop_fills = sorted(
        (f.order.client_order_id, f.price, f.quantity, f.fee, ms_from_datetime(f.executed_at))
        for f in Fill.objects.select_related("order")
    )
    engine_fills = sorted(
        (o.client_order_id, o.fill.price, o.fill.quantity, o.fill.fee, o.fill.time_ms)
        for o in result.orders
        if o.fill is not None
    )
    assert engine_fills == loop_fills
    skips = sorted(
        (d.signal.symbol, d.signal.close_ms, d.reason) for d in result.decisions if d.outcome == "skipped"
    )
    loop_skips = sorted(
        (d.signal.symbol.symbol, ms_from_datetime(d.signal.open_time) + MINUTE, d.reason)
        for d in SignalDecision.objects.filter(outcome="skipped").select_related("signal__symbol")
    )
    assert skips == loop_skips
    for position in Position.objects.filter(mode="dry_run").select_related("symbol"):
        state = result.positions[position.symbol.symbol]
        assert (state.quantity, state.realized_pnl, state.fees) == (
            position.quantity,
            position.realized_pnl,
            position.fees,
        )
    for balance in Balance.objects.filter(mode="dry_run"):
        assert result.balances.get(balance.asset, Decimal(0)) == balance.free, balance.asset


def test_drift_over_a_dry_run_session_is_zero_and_an_edited_candle_is_named(sim, client):
    last = replay_session()
    until = last + timedelta(minutes=1)
    since = until - timedelta(minutes=REPLAY_MINUTES)
    report = drift_check(since=since, until=until, exchange="sim")
    assert report.signals_compared > 10
    assert report.orders_compared > 10
    assert report.fills_compared > 10
    assert report.mismatches == []
    assert all(bps == 0 for bps in report.pnl_bps.values())
    assert not report.over_tolerance

    # A fill price off by less than the rule's drift_tolerance.price_pct (0.1 % by default) is
    # reported, but within tolerance; by more, it is over.
    fill = Fill.objects.filter(order__side="sell").select_related("order__symbol").order_by("id")[3]
    original = fill.price
    for moved, over in ((Decimal("1.0005"), False), (Decimal("1.002"), True)):
        Fill.objects.filter(pk=fill.pk).update(price=original * moved)
        report = drift_check(since=since, until=until, exchange="sim")
        (differs,) = report.mismatches
        assert (differs.kind, differs.symbol, differs.within_tolerance) == (
            "fill",
            fill.order.symbol.symbol,
            not over,
        )
        assert f"fill of {fill.order.client_order_id}" in differs.detail
        assert report.over_tolerance is over
    Fill.objects.filter(pk=fill.pk).update(price=original)

    # Someone edits a stored candle the session traded on: drift names it.
    order = Order.objects.filter(side="buy", status=OrderStatus.FILLED).order_by("id")[5]
    assert order.signal is not None
    candle = Candle.objects.get(symbol=order.symbol, timeframe="1m", open_time=order.signal.open_time)
    Candle.objects.filter(pk=candle.pk).update(close=candle.close * 2, high=candle.high * 2)
    report = drift_check(since=since, until=until, exchange="sim")
    assert report.over_tolerance
    (edited,) = [m for m in report.mismatches if m.kind == "candle"]
    assert (edited.symbol, edited.timeframe, edited.time) == (
        order.symbol.symbol,
        "1m",
        order.signal.open_time.isoformat(),
    )
    assert (
        f"close was {float(candle.close)} when dry-run decided, {float(candle.close * 2)} now"
        in edited.detail
    )
    # The web process's /metrics shows the last check (read from its audit event).
    scraped = client.get("/metrics").content.decode()
    assert "oasis_drift_last_over_tolerance 1.0" in scraped
    assert (
        f'oasis_drift_last_mismatches{{kind="candle",symbol="{order.symbol.symbol}",timeframe="1m"}} 1.0'
        in scraped
    )
    out = StringIO()
    with pytest.raises(CommandError, match="over tolerance"):
        call_command(
            "drift",
            f"--since={since.isoformat()}",
            f"--until={until.isoformat()}",
            "--exchange=sim",
            stdout=out,
        )
    assert f"candle {order.symbol.symbol} 1m {order.signal.open_time.isoformat()}: high was" in out.getvalue()
