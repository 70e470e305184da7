"""Post-close evaluation through the live path (close events → covering active rules →
persisted signals) equals the offline computation on the same real candles, across a restart;
flags gate it; a failing rule is disabled for its pair and audited; signals are broadcast."""

import dataclasses
import math

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.cache import cache
from waffle.models import Flag

from audit.models import AuditEvent
from marketdata.core.klines import Kline
from marketdata.core.timeframes import Timeframe
from marketdata.events import ClosedCandle, candles_closed
from marketdata.ingest.derived import closed_candle_event
from marketdata.services import CandleWrite, candles_upsert_closed
from marketdata.tests.factories import SymbolFactory
from marketdata.tests.shared_data import real_klines
from rules import evaluation
from rules.engine.base import CandleSeries
from rules.engine.evaluator import RuleProgram, RuleStates, offline_signals
from rules.engine.spec import parse_spec
from rules.models import Signal
from rules.services import rule_config_create, rule_version_activate

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("celery_inline")]

ROWS = 1500
SPEC = {
    "timeframes": ["1m"],
    "indicators": {
        "fast": {"kind": "ema", "period": 9},
        "slow": {"kind": "ema", "period": 21},
        "rsi": {"kind": "rsi", "period": 14},
    },
    "entry": "fast crosses_above slow and rsi < 70",
    "exit": "fast crosses_below slow or rsi > 75",
    "sizing": {"quote_amount": "100"},
    "limits": {"max_position_per_symbol": "500", "max_position_total": "5000"},
}


@pytest.fixture(autouse=True)
def fresh_evaluator(monkeypatch):
    monkeypatch.setattr(evaluation, "_evaluator", None)
    cache.clear()  # waffle caches flags; each test's database starts afresh


def set_flag(config, everyone):
    flag = Flag.objects.get(name=config.flag_name)
    flag.everyone = everyone
    flag.save()
    flag.flush()  # waffle refreshes its cache on commit, which a test's transaction never reaches


@pytest.fixture
def series():
    symbol = SymbolFactory.create(symbol="BTCUSDT")
    klines = real_klines("BTCUSDT", ROWS)
    candles_upsert_closed(writes=[CandleWrite(symbol.pk, k, "rest") for k in klines])
    return symbol, klines


def event(symbol_id: int, k: Kline) -> ClosedCandle:
    """The close as the ingest process announces it."""
    return closed_candle_event(CandleWrite(symbol_id, k, "ws"), symbol=k.symbol, committed_at=0.0)


def active_rule(symbols=("BTCUSDT",), everyone=True):
    config = rule_config_create(
        name="ema", description="", symbols=list(symbols), spec=SPEC, author="system:test"
    )
    rule_version_activate(version=config.versions.get(), actor="system:test")
    set_flag(config, everyone)
    return config


def offline(klines: list[Kline]) -> list[tuple[int, str]]:
    program = RuleProgram.from_spec(parse_spec(SPEC), Timeframe.M1)
    series = CandleSeries.from_columns(
        open_time_ms=[k.open_time_ms for k in klines],
        high=[float(k.high) for k in klines],
        low=[float(k.low) for k in klines],
        close=[float(k.close) for k in klines],
        volume=[float(k.volume) for k in klines],
    )
    return offline_signals(program, series, [float(k.open) for k in klines])


def stored_signals() -> list[tuple[int, str]]:
    return [(int(s.open_time.timestamp() * 1000), s.action) for s in Signal.objects.order_by("open_time")]


def test_replaying_through_the_live_path_equals_offline_even_across_a_restart(series):
    symbol, klines = series
    active_rule()
    half = 1000
    for k in klines[:half]:
        candles_closed([event(symbol.pk, k)])  # one close at a time, as ingestion announces them
    evaluation._evaluator = None  # a restart: states are rebuilt from the stored candles
    for k in klines[half:]:
        candles_closed([event(symbol.pk, k)])
    expected = offline(klines)
    assert len(expected) > 10
    assert stored_signals() == expected
    signal = Signal.objects.order_by("open_time").first()
    assert signal is not None
    assert set(signal.indicators) >= {"fast", "slow", "rsi", "close"}
    # Announcing the same closes again changes nothing.
    for k in klines[-50:]:
        candles_closed([event(symbol.pk, k)])
    assert stored_signals() == expected


def test_stored_signals_hold_the_values_the_rule_saw(series):
    symbol, klines = series
    active_rule()
    for k in klines[:400]:
        candles_closed([event(symbol.pk, k)])
    candles = CandleSeries.from_columns(
        open_time_ms=[k.open_time_ms for k in klines[:400]],
        high=[float(k.high) for k in klines[:400]],
        low=[float(k.low) for k in klines[:400]],
        close=[float(k.close) for k in klines[:400]],
        volume=[float(k.volume) for k in klines[:400]],
    )
    program = RuleProgram.from_spec(parse_spec(SPEC), Timeframe.M1)
    batch = {item.outputs[0]: item.indicator.batch(candles) for item in program.indicators}
    index = {k.open_time_ms: n for n, k in enumerate(klines)}
    signals = list(Signal.objects.order_by("open_time"))
    assert signals
    for signal in signals:
        at = index[int(signal.open_time.timestamp() * 1000)]
        assert signal.symbol_id == symbol.pk
        assert signal.timeframe == "1m"
        assert signal.indicators["close"] == float(klines[at].close)
        assert signal.indicators["open"] == float(klines[at].open)
        for name, column in batch.items():
            assert signal.indicators[name] == float(column[at])  # exactly, through the JSON


def test_flags_gate_rules_and_uncovered_pairs_are_skipped(series):
    symbol, klines = series
    config = active_rule(everyone=False)
    for k in klines[:300]:
        candles_closed([event(symbol.pk, k)])
    assert Signal.objects.count() == 0
    set_flag(config, True)
    other = SymbolFactory.create(symbol="ETHUSDT")
    for k in klines[:300]:
        candles_closed([event(other.pk, dataclasses.replace(k, symbol="ETHUSDT"))])
    assert Signal.objects.count() == 0  # ETHUSDT is not one of the rule's symbols
    for k in klines[300:700]:
        candles_closed([event(symbol.pk, k)])
    assert Signal.objects.filter(symbol=symbol).count() > 0  # on now: rebuilt from history, and running


def test_a_failing_rule_is_disabled_for_the_pair_and_audited(series):
    symbol, klines = series
    other = SymbolFactory.create(symbol="ETHUSDT")
    eth = [dataclasses.replace(k, symbol="ETHUSDT") for k in klines]
    candles_upsert_closed(writes=[CandleWrite(other.pk, k, "rest") for k in eth])
    active_rule(symbols=("BTCUSDT", "ETHUSDT"))
    broken = dataclasses.replace(event(symbol.pk, klines[500]), close=math.nan)
    candles_closed([broken, event(other.pk, eth[500])])  # one step for both symbols
    disabled = AuditEvent.objects.get(action="rules.pair.disabled")
    assert disabled.payload["symbol"] == "BTCUSDT"
    assert "ValueError" in disabled.payload["error"]
    for index in range(501, 900):
        candles_closed([event(symbol.pk, klines[index]), event(other.pk, eth[index])])
    assert AuditEvent.objects.filter(action="rules.pair.disabled").count() == 1  # stays disabled, no flood
    assert not Signal.objects.filter(symbol=symbol).exists()
    # The other pair went on, as if it had been alone.
    stored = [(int(s.open_time.timestamp() * 1000), s.action) for s in Signal.objects.order_by("open_time")]
    assert stored == [signal for signal in offline(eth[:900]) if signal[0] >= eth[500].open_time_ms]
    assert stored


def test_a_rule_that_raises_disables_the_pairs_it_was_stepping(series, monkeypatch):
    symbol, klines = series
    active_rule()

    def broken(self, *args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(RuleStates, "step", broken)
    candles_closed([event(symbol.pk, klines[500])])
    disabled = AuditEvent.objects.get(action="rules.pair.disabled")
    assert disabled.payload["symbol"] == "BTCUSDT"
    assert "ZeroDivisionError: boom" in disabled.payload["error"]
    candles_closed([event(symbol.pk, klines[501])])
    assert AuditEvent.objects.filter(action="rules.pair.disabled").count() == 1  # stays disabled, no flood


def test_signals_are_broadcast_after_commit(series, django_capture_on_commit_callbacks):
    symbol, klines = series
    active_rule()
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(evaluation.SIGNALS_GROUP, channel)
    with django_capture_on_commit_callbacks(execute=True):
        for k in klines[:400]:
            candles_closed([event(symbol.pk, k)])
    first = Signal.objects.order_by("open_time").first()
    assert first is not None
    message = async_to_sync(layer.receive)(channel)
    assert message["type"] == "signals.new"
    assert message["signals"][0]["open_time"] == first.open_time.isoformat()
