"""Live mode against the simulator's order endpoints, through ccxt over real HTTP with test keys:
a burst of 5xx trips the kill switch and nothing is sent after it; a submit whose answer is lost
is settled by asking the exchange, so exactly one exchange order exists; an order filled while
the process was down is reconciled at restart; and the keys never show anywhere."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.cache import cache
from django.test import TestCase
from waffle.models import Flag

from audit.models import AuditEvent
from marketdata.backfill import backfill_range
from marketdata.core.timeframes import ms_from_datetime
from marketdata.models import Candle, Symbol
from marketdata.simulator.config import SimConfig
from marketdata.simulator.server import SimExchangeThread
from marketdata.tests.ingest_harness import sim_faults, sim_get, sim_in_use
from oasis_site.flags import LIVE_TRADING
from rules.models import RuleConfig, Signal
from rules.services import rule_config_create, rule_version_activate
from trading.brokers.base import BrokerError
from trading.brokers.live import LiveBroker
from trading.core.types import KillSwitchState, OrderStatus
from trading.credentials import ExchangeCredentials
from trading.execution import ExecutionConfig, ExecutionLoop
from trading.killswitch import killswitch_view
from trading.models import Balance, Fill, Order, Position
from trading.runner import execution_loop

pytestmark = pytest.mark.django_db

KEY, SECRET = "sim-key", "sim-secret"  # the simulator's test keys
SPEC: dict[str, Any] = {
    "timeframes": ["1m"],
    "entry": "close > open",
    "exit": "close < open",
    "sizing": {"quote_amount": "100"},
    "limits": {"max_position_per_symbol": "1000", "max_position_total": "5000"},
    "kill_switch": {"error_burst": {"count": 3, "window_s": 60}},
}


@pytest.fixture(scope="module")
def running_sim() -> Iterator[SimExchangeThread]:
    with SimExchangeThread(SimConfig(port=0, symbols=("BTCUSDT", "ETHUSDT"), history_minutes=120)) as sim:
        yield sim


@dataclass
class Live:
    sim: SimExchangeThread
    config: RuleConfig
    make_loop: Callable[..., ExecutionLoop]

    def signal(self, symbol: str, action: str = "enter", *, back: int = 0) -> Signal:
        """A signal on the newest closed 1m candle of `symbol` (fetched from the simulator), or
        on the one `back` candles before it."""
        now = datetime.now(tz=UTC).replace(second=0, microsecond=0)
        backfill_range(exchange="sim", symbol=symbol, timeframe="1m", since=now - timedelta(minutes=5))
        candle = Candle.objects.filter(symbol__symbol=symbol, timeframe="1m").order_by("-open_time")[back]
        self.config.refresh_from_db()
        assert self.config.active_version is not None
        return Signal.objects.create(
            symbol=candle.symbol,
            timeframe="1m",
            open_time=candle.open_time,
            rule_version=self.config.active_version,
            action=action,
            indicators={},
            computed_at=datetime.now(tz=UTC),
        )

    def orders(self) -> dict[str, Any]:
        answer: dict[str, Any] = sim_get(self.sim, "/_sim/orders")
        return answer


def clock_after(signal: Signal) -> Callable[[], float]:
    """The loop's clock: one second after the signal's candle closed, then running with time."""
    start = (signal.open_time + timedelta(minutes=1, seconds=1)).timestamp()
    t0 = time.monotonic()
    return lambda: start + (time.monotonic() - t0)


def cycle(loop: ExecutionLoop) -> None:
    with TestCase.captureOnCommitCallbacks(execute=True):
        loop.cycle()


@pytest.fixture
def live(running_sim: SimExchangeThread, settings: Any) -> Iterator[Live]:
    cache.clear()
    with sim_in_use(running_sim, settings):
        host, port = running_sim.address
        config = rule_config_create(
            name="live", description="", symbols=["BTCUSDT", "ETHUSDT"], spec=SPEC, author="system:test"
        )
        rule_version_activate(version=config.versions.get(), actor="system:test")

        def make_loop(clock: Callable[[], float], **broker: Any) -> ExecutionLoop:
            return ExecutionLoop(
                broker_factory=lambda loop: LiveBroker(
                    exchange="sim",
                    credentials=ExchangeCredentials(api_key=KEY, secret=SECRET),
                    rest_url=f"http://{host}:{port}",
                    gate=loop.gate,
                    on_error=loop.on_broker_error,
                    **{"base_delay_s": 0.01, "max_delay_s": 0.05, "timeout_ms": 2000, **broker},
                ),
                config=ExecutionConfig(mode="live", exchange="sim", tripwire_every_s=10**9),
                clock=clock,
            )

        yield Live(sim=running_sim, config=config, make_loop=make_loop)


def test_a_burst_of_server_errors_trips_the_kill_switch_and_nothing_is_sent_after_it(live: Live) -> None:
    btc = live.signal("BTCUSDT")
    loop = live.make_loop(clock_after(btc), max_attempts=10)
    loop.start()
    before = live.orders()
    sim_faults(live.sim, {"rest_error": {"status": "5xx", "count": 1000}})
    cycle(loop)

    switch = killswitch_view()
    assert switch.state is KillSwitchState.HALTED
    assert switch.tripwire == "error_burst"
    assert "3 execution errors in 60 s" in switch.reason
    # A 5xx may hide an accepted order: its fate is asked, never assumed; it stays submitted.
    order = Order.objects.get(signal=btc)
    assert order.status == OrderStatus.SUBMITTED
    at_trip = live.orders()
    # The burst was three failed calls (the submit and the lookups of its fate), then nothing.
    assert at_trip["attempts"] == before["attempts"]
    assert 1 <= at_trip["faulted"] - before["faulted"] <= 3

    sim_faults(live.sim, None)  # the exchange is healthy again; the switch stays engaged
    eth = live.signal("ETHUSDT")
    cycle(loop)
    assert Order.objects.get(signal=eth).reject_reason == "kill_switch_halted"
    after = live.orders()
    assert (after["attempts"], after["faulted"]) == (at_trip["attempts"], at_trip["faulted"])
    assert not [o for o in after["orders"] if o["clientOrderId"] == order.client_order_id]

    # Later, reconciliation learns that the exchange never got it.
    clock = loop.clock
    loop.clock = lambda: clock() + 60
    with TestCase.captureOnCommitCallbacks(execute=True):
        loop.reconcile()
    order.refresh_from_db()
    assert order.status == OrderStatus.EXPIRED
    assert live.orders()["attempts"] == at_trip["attempts"]


def test_a_submit_whose_answer_is_lost_yields_exactly_one_exchange_order(live: Live) -> None:
    signal = live.signal("BTCUSDT")
    loop = live.make_loop(clock_after(signal), timeout_ms=500)
    loop.start()
    sim_faults(live.sim, {"order_timeout": {"count": 1, "hold_s": 2}})
    cycle(loop)
    cycle(loop)  # and nothing more on the next cycle

    order = Order.objects.get(signal=signal)
    assert order.status == OrderStatus.FILLED
    mine = [o for o in live.orders()["orders"] if o["clientOrderId"] == order.client_order_id]
    assert len(mine) == 1
    assert mine[0]["status"] == "FILLED"
    assert order.exchange_order_id == str(mine[0]["orderId"])
    assert order.filled_quantity == Decimal(mine[0]["executedQty"])
    fills = list(Fill.objects.filter(order=order))
    assert sum((f.quantity for f in fills), Decimal(0)) == order.filled_quantity
    assert Position.objects.get(mode="live", symbol=order.symbol).quantity == order.filled_quantity


def test_an_order_filled_while_the_process_was_down_is_reconciled_at_restart(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    signal = live.signal("ETHUSDT")
    loop = live.make_loop(clock_after(signal))
    loop.start()
    real_submit = loop.broker.submit

    def submit_then_die(intent: Any) -> Any:
        real_submit(intent)  # the exchange takes and fills the order ...
        raise SystemExit("killed")  # ... and the process dies before it hears back

    monkeypatch.setattr(loop.broker, "submit", submit_then_die)
    with pytest.raises(SystemExit):
        cycle(loop)
    order = Order.objects.get(signal=signal)
    assert (order.status, order.submitted_at is not None) == (OrderStatus.NEW, True)
    assert not Position.objects.filter(mode="live", symbol=order.symbol).exists()

    restarted = live.make_loop(clock_after(signal))
    with TestCase.captureOnCommitCallbacks(execute=True):
        restarted.start()  # reconciliation before any new order

    order.refresh_from_db()
    (truth,) = [o for o in live.orders()["orders"] if o["clientOrderId"] == order.client_order_id]
    assert order.status == OrderStatus.FILLED
    assert order.filled_quantity == Decimal(truth["executedQty"])
    assert Position.objects.get(mode="live", symbol=order.symbol).quantity == order.filled_quantity
    assert Fill.objects.filter(order=order).count() >= 1
    eth = Balance.objects.get(mode="live", asset="ETH")
    assert eth.free + eth.locked >= order.filled_quantity
    corrected = AuditEvent.objects.filter(object_id=str(order.pk), actor="system:reconciliation")
    assert corrected.exists()
    cycle(restarted)
    assert len([o for o in live.orders()["orders"] if o["clientOrderId"] == order.client_order_id]) == 1


def test_live_mode_needs_the_flag_and_keys(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    from trading.runner import ExecutionSetupError

    assert execution_loop(exchange="sim").config.mode == "dry_run"
    Flag.objects.update_or_create(name=LIVE_TRADING, defaults={"everyone": True})
    cache.clear()
    for name in ("OASIS_SIM_API_KEY", "OASIS_SIM_API_SECRET", "OASIS_SIM_SECRETS_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ExecutionSetupError, match="OASIS_SIM_API_KEY"):
        execution_loop(exchange="sim")
    monkeypatch.setenv("OASIS_SIM_API_KEY", KEY)
    monkeypatch.setenv("OASIS_SIM_API_SECRET", SECRET)
    loop = execution_loop(exchange="sim")
    assert loop.config.mode == "live"
    assert isinstance(loop.broker, LiveBroker)
    assert loop.broker.balances()  # signed requests work with the keys from the environment


def test_keys_never_appear_in_logs_audit_rows_or_pages(
    live: Live,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: Any,
    admin_client: Any,
) -> None:
    caplog.set_level(logging.DEBUG)
    Flag.objects.update_or_create(name=LIVE_TRADING, defaults={"everyone": True})
    cache.clear()
    monkeypatch.setenv("OASIS_SIM_API_KEY", KEY)
    monkeypatch.setenv("OASIS_SIM_API_SECRET", SECRET)
    first = live.signal("BTCUSDT", back=1)
    loop = execution_loop(exchange="sim")
    loop.clock = clock_after(first)
    loop.start()
    cycle(loop)  # a normal order
    sim_faults(live.sim, {"rest_error": {"status": 503, "count": 2}})
    with TestCase.captureOnCommitCallbacks(execute=True):
        loop.reconcile()  # errors on the way, retried
    sim_faults(live.sim, None)
    exit_signal = live.signal("BTCUSDT", action="exit")
    cycle(loop)
    # A wrong secret: the exchange's refusal must not echo what we sent.
    bad = LiveBroker(
        exchange="sim",
        credentials=ExchangeCredentials(api_key=KEY, secret="wrong-" + SECRET),
        rest_url=f"http://{live.sim.address[0]}:{live.sim.address[1]}",
        base_delay_s=0.01,
    )
    with pytest.raises(BrokerError) as refused:
        bad.balances()
    texts = [str(refused.value), repr(refused.value), repr(bad), str(loop.broker.__dict__)]

    texts += [record.getMessage() for record in caplog.records]
    captured = capfd.readouterr()
    texts += [captured.out, captured.err]
    texts += [str(event.payload) for event in AuditEvent.objects.all()]
    texts += [f"{o.reject_detail} {o.reject_reason}" for o in Order.objects.all()]
    for url in (
        "/admin/trading/order/",
        f"/admin/trading/order/{Order.objects.get(signal=first).pk}/change/",
        "/admin/trading/killswitch/",
        "/admin/trading/balance/",
        "/admin/audit/auditevent/",
        "/metrics",
    ):
        response = admin_client.get(url, follow=True)
        assert response.status_code == 200, url
        texts.append(response.content.decode())
    assert Order.objects.filter(signal=exit_signal).exists()
    leaked = [text for text in texts if KEY in text or SECRET in text]
    assert not leaked, leaked[0][:500]
    assert ms_from_datetime(first.open_time) > 0
    assert Symbol.objects.filter(exchange="sim").exists()
