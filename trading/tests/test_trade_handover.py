"""The trader on a rolling update: the real `manage.py trade` process (dry-run, PostgreSQL),
stopped with SIGTERM while it works through a backlog of signals, finishes the signal in hand
and leaves nothing half-done (no order row without its decision, none unsent); the next one
decides the rest and finishes the orders the first left in flight (test_runner_lock holds
that only one runs at a time). In the end every
signal is decided exactly once, no client order id is used twice, and the audit chain holds."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from audit.selectors import audit_chain_verify
from marketdata.core.klines import Kline
from marketdata.core.timeframes import Timeframe, ms_from_datetime
from marketdata.models import Symbol
from marketdata.services import CandleWrite, candles_upsert_closed
from marketdata.simulator import SimConfig, SimExchangeThread
from marketdata.simulator.symbols import generated_names
from marketdata.tests.ingest_harness import ingest_env, sim_in_use
from oasis_site.tests.stack_harness import stop_gracefully
from rules.models import Signal
from rules.services import rule_config_create, rule_version_activate
from trading.core.types import OrderStatus
from trading.models import Order, SignalDecision

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = tuple(generated_names(30))
RULES = 12
SPEC: dict[str, Any] = {
    "timeframes": ["1m"],
    "entry": "close > open",
    "exit": "close < open",
    "sizing": {"quote_amount": "15"},
    "limits": {"max_position_per_symbol": "1000", "max_position_total": "100000"},
}


@pytest.fixture
def sim(settings):
    with (
        SimExchangeThread(SimConfig(port=0, symbols=SYMBOLS, history_minutes=60)) as running,
        sim_in_use(running, settings),
    ):
        yield running


def a_candle(symbol: Symbol, open_ms: int) -> CandleWrite:
    o, h, low, c, v, q = (Decimal(x) for x in ("100.00", "101.00", "99.50", "100.50", "12.5", "1256.25"))
    return CandleWrite(
        symbol.pk, Kline(symbol.symbol, Timeframe.M1, open_ms, o, h, low, c, v, q, 40, True), "rest"
    )


def the_next_candle_closes() -> None:
    """Dry-run market orders fill on the candle after their signal's: that candle, everywhere."""
    newest = Signal.objects.order_by("-open_time").values_list("open_time", flat=True)[0]
    next_ms = ms_from_datetime(newest) + 60_000
    candles_upsert_closed(
        writes=[a_candle(symbol, next_ms) for symbol in Symbol.objects.filter(exchange="sim")]
    )


def a_backlog() -> int:
    """Fresh closed candles for every symbol and, from each of RULES active rules, an entry
    signal on each symbol's newest one."""
    minute = datetime.now(tz=UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    symbols = list(Symbol.objects.filter(exchange="sim", symbol__in=SYMBOLS))
    writes = []
    for symbol in symbols:
        for back in range(3):
            open_ms = ms_from_datetime(minute) - back * 60_000
            o, h, low, c, v, q = (
                Decimal(x) for x in ("100.00", "101.00", "99.50", "100.50", "12.5", "1256.25")
            )
            kline = Kline(symbol.symbol, Timeframe.M1, open_ms, o, h, low, c, v, q, 40, True)
            writes.append(CandleWrite(symbol.pk, kline, "rest"))
    candles_upsert_closed(writes=writes)
    signals = []
    for n in range(RULES):
        config = rule_config_create(
            name=f"handover-{n}", description="", symbols=list(SYMBOLS), spec=SPEC, author="system:test"
        )
        version = config.versions.get()
        rule_version_activate(version=version, actor="system:test")
        signals += [
            Signal(
                symbol=symbol,
                timeframe="1m",
                open_time=minute,
                rule_version=version,
                action="enter",
                indicators={},
                computed_at=datetime.now(tz=UTC),
            )
            for symbol in symbols
        ]
    Signal.objects.bulk_create(signals)
    return len(signals)


def start_trade(sim: SimExchangeThread, log: Path) -> subprocess.Popen[str]:
    with log.open("a") as sink:
        return subprocess.Popen(
            [sys.executable, "manage.py", "trade", "--exchange", "sim", "--metrics-port", "0",
             "--poll-interval", "0.05"],
            cwd=ROOT,
            env={**ingest_env(sim), "OASIS_LOG_FORMAT": "json"},
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip


def stop_trade(process: subprocess.Popen[str], log: Path) -> float:
    return stop_gracefully(process, log, what="trade")


def wait_for_decisions(count: int, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while SignalDecision.objects.count() < count:
        assert time.monotonic() < deadline, f"fewer than {count} decisions:\n{log.read_text()[-4000:]}"
        time.sleep(0.02)


def assert_nothing_half_done() -> None:
    """Every order row has its signal's decision and was sent (submitted orders wait in flight
    for the next candle: they are handed over, not half-done)."""
    orders = Order.objects.filter(signal__isnull=False)
    undecided = orders.filter(signal__decision__isnull=True)
    assert not undecided.exists(), f"orders without their signal's decision: {list(undecided[:5])}"
    unsent = orders.filter(status=OrderStatus.NEW)
    assert not unsent.exists(), f"order rows never sent: {list(unsent[:5])}"


def test_sigterm_mid_backlog_then_the_successor_decides_the_rest(sim, tmp_path):
    log = tmp_path / "trade.log"
    total = a_backlog()
    first = start_trade(sim, log)
    try:
        wait_for_decisions(30, log)
        took = stop_trade(first, log)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    decided_by_first = SignalDecision.objects.count()
    assert 30 <= decided_by_first < total, f"the stop did not land mid-backlog ({decided_by_first}/{total})"
    assert took < 15, f"the trader took {took:.1f} s to stop"
    assert "stopped" in log.read_text()
    assert_nothing_half_done()

    in_flight = Order.objects.filter(status=OrderStatus.SUBMITTED).count()
    assert in_flight > 0, "no order was in flight at the handover"

    second = start_trade(sim, log)
    try:
        wait_for_decisions(total, log)
        # The orders the first trader left in flight are the successor's to finish.
        the_next_candle_closes()
        deadline = time.monotonic() + 60
        while Order.objects.filter(status=OrderStatus.SUBMITTED).exists():
            assert time.monotonic() < deadline, f"orders never filled:\n{log.read_text()[-4000:]}"
            time.sleep(0.1)
    finally:
        stop_trade(second, log)
    assert SignalDecision.objects.count() == total
    assert Signal.objects.filter(decision__isnull=True).count() == 0
    assert_nothing_half_done()
    ordered = SignalDecision.objects.filter(outcome=SignalDecision.Outcome.ORDERED).count()
    assert ordered == Order.objects.filter(signal__isnull=False).count()
    assert ordered > 0, "no signal became an order: the backlog did not exercise the order path"
    ids = list(Order.objects.values_list("client_order_id", flat=True))
    assert len(ids) == len(set(ids))
    final = {status.value for status in OrderStatus if status.is_final}
    assert not Order.objects.exclude(status__in=final).exists(), "orders left unfinished after the handover"
    assert Order.objects.filter(status=OrderStatus.FILLED).count() >= in_flight
    assert audit_chain_verify().intact
