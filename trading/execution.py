"""The execution loop: signals → intents → risk checks → broker → order rows, fills, positions.

One process runs it (`manage.py trade`; a database lock keeps a second one out). Each cycle:
1. tripwires (every `tripwire_every_s`): trip the kill switch when a threshold is crossed;
2. resting dry-run limit orders that candles have reached get their fills;
3. undecided signals, oldest first: each becomes an order row (sent, or rejected with its
   reason) or a skip, exactly once — the row is written before the request leaves;
4. reconciliation with the exchange (every `reconcile_every_s`, and at start);
5. an equity snapshot (every `equity_every_s`), which drawdown is measured on.
No exception from one signal stops the loop: it is logged, counted and the next goes on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import structlog
from django.db import transaction

from audit.alerting import alert_raise
from audit.models import AlertSeverity
from marketdata.core.timeframes import Timeframe, ms_from_datetime
from marketdata.models import Symbol
from rules.engine.spec import RuleSpec, parse_spec
from rules.models import RuleConfig, RuleConfigVersion, Signal
from rules.selectors import active_versions
from trading import metrics, selectors, services
from trading.brokers.base import Broker, BrokerError, BrokerUnavailable, Halted, OrderRefused, OutcomeUnknown
from trading.brokers.dry_run import DryRunBroker
from trading.core import decisions, risk, tripwires
from trading.core.identifiers import client_order_id
from trading.core.types import KillSwitchState, OrderIntent, OrderType, Refusal, Side
from trading.killswitch import killswitch_trip, killswitch_view
from trading.models import EquitySnapshot, Mode, Order
from trading.reconciliation import reconcile, with_fills

logger = structlog.get_logger(__name__)

# Skip reasons (signal decisions that are not orders).
VERSION_INACTIVE = "version_inactive"
UNKNOWN_SYMBOL = "unknown_symbol"


@dataclass
class ExecutionConfig:
    mode: str
    exchange: str
    quote_asset: str = "USDT"
    taker_fee_bps: Decimal = Decimal(10)
    batch: int = 200
    signal_lookback: timedelta = timedelta(hours=24)
    # A signal older than this (or than its timeframe, if shorter) is not acted on: the market
    # has moved since. Seconds after its candle closed.
    max_signal_age_s: int = 120
    reconcile_every_s: float = 60.0
    # A request sent less than this long ago may still be on its way to the exchange: an order
    # not found yet is only declared missing after it.
    in_flight_s: float = 30.0
    equity_every_s: float = 60.0
    tripwire_every_s: float = 5.0
    latency_window: timedelta = timedelta(minutes=5)
    exchange_limits: risk.ExchangeLimits = field(default_factory=risk.ExchangeLimits)


# Refusals that only say "not now": the exchange's own request limits. The signal waits.
DEFERRABLE = frozenset({risk.EXCHANGE_ORDER_LIMIT, risk.EXCHANGE_WEIGHT_LIMIT})


class Deferred(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class CycleReport:
    decided: int = 0
    orders: int = 0
    rejected: int = 0
    skipped: int = 0
    resting_filled: int = 0
    tripped: list[str] = field(default_factory=list)
    deferred: str = ""  # why the remaining signals wait for the next cycle


class ExecutionLoop:
    def __init__(
        self,
        *,
        broker_factory: Callable[[ExecutionLoop], Broker],
        config: ExecutionConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`broker_factory` gets the loop, so the broker can hold its `gate` and
        `on_broker_error` hooks."""
        self.config = config
        self.clock = clock
        self.errors = tripwires.ErrorWindow()
        self._specs: dict[int, RuleSpec] = {}
        self._last_reconcile = float("-inf")
        self._last_equity = float("-inf")
        self._last_tripwires = float("-inf")
        self._reducing_submit = False
        self._thresholds = tripwires.Thresholds()
        self._started_ms = self._now_ms()
        self.broker: Broker = broker_factory(self)

    # The broker's hooks -------------------------------------------------------------------

    def gate(self) -> bool:
        """Whether an order may (still) be sent: read before every attempt, retries included."""
        state = selectors.killswitch_state()
        if state is KillSwitchState.HALTED:
            return False
        return state is KillSwitchState.ACTIVE or self._reducing_submit

    def on_broker_error(self, kind: str, detail: str) -> None:
        """Every failed exchange call: counted, and the error burst checked at once, so the
        kill switch trips before the next attempt (which then meets a closed gate)."""
        now_ms = self._now_ms()
        self.errors.record(now_ms, kind)
        metrics.EXECUTION_ERRORS.labels(kind=kind).inc()
        logger.warning("execution_error", kind=kind, detail=detail)
        # One alert per kind of error, counted while it recurs (notifications go out from
        # their own thread: this is one small write).
        alert_raise(
            key=f"trading.exchange_error.{kind}",
            severity=AlertSeverity.WARNING,
            title=f"Exchange calls failing ({kind})",
            detail=detail[:500],
            actor="system:execution",
        )
        trips = tripwires.evaluate(self._thresholds, now_ms=now_ms, errors=self.errors)
        if trips:
            killswitch_trip(trips)

    # The cycle -----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), tz=UTC)

    def start(self) -> None:
        """At start: the thresholds, and reconciliation before any new order."""
        self._started_ms = self._now_ms()
        metrics.set_killswitch_state(selectors.killswitch_state())
        self._thresholds = self._current_thresholds()
        self.reconcile()

    def run(self, stop: threading.Event, *, poll_interval_s: float = 0.25) -> None:
        self.start()
        while not stop.is_set():
            report = self.cycle()
            if not report.decided or report.deferred:
                stop.wait(poll_interval_s)

    def cycle(self) -> CycleReport:
        report = CycleReport()
        now = self.clock()
        if now - self._last_tripwires >= self.config.tripwire_every_s:
            self._last_tripwires = now
            report.tripped = self.check_tripwires()
        if isinstance(self.broker, DryRunBroker):
            report.resting_filled = self._fill_resting()
        try:
            batch = selectors.undecided_signals(
                since=self._now() - self.config.signal_lookback, limit=self.config.batch
            )
            for signal in sorted(batch, key=_canonical):
                self._decide_safely(signal, report)
        except Deferred as wait:
            # The exchange's own limit is near: the rest waits for the next cycles, in order
            # (a signal that waits past its timeframe is then skipped as stale).
            report.deferred = wait.reason
        try:
            self.protective_exits(report)
        except Deferred as wait:
            report.deferred = wait.reason
        except Exception:  # like a signal: logged, never stops the loop
            logger.exception("protective_exits_failed")
        if now - self._last_reconcile >= self.config.reconcile_every_s:
            self.reconcile()
        if now - self._last_equity >= self.config.equity_every_s or report.orders:
            self._last_equity = now
            services.equity_snapshot_take(
                mode=self.config.mode, quote_asset=self.config.quote_asset, now=self._now()
            )
        self._publish_rejection_ratio()
        return report

    def reconcile(self) -> None:
        self._last_reconcile = self.clock()
        try:
            self.broker.prepare()
            reconcile(
                broker=self.broker,
                mode=self.config.mode,
                exchange=self.config.exchange,
                now=self._now(),
                in_flight=timedelta(seconds=self.config.in_flight_s),
            )
        except BrokerError as error:
            self.on_broker_error("reconcile", str(error))

    # Tripwires -------------------------------------------------------------------------------

    def _current_thresholds(self) -> tripwires.Thresholds:
        specs = [self._spec(version) for version in active_versions()]
        return tripwires.Thresholds.strictest(thresholds_of(spec) for spec in specs)

    def check_tripwires(self) -> list[str]:
        self._thresholds = self._current_thresholds()
        now = self._now()
        traded = list(
            Symbol.objects.filter(exchange=self.config.exchange, symbol__in=_active_symbols()).values_list(
                "id", flat=True
            )
        )
        since = now - self.config.latency_window
        equity = selectors.latest_equity(self.config.mode)
        stalest_ms, stalest_symbol = self._stalest_data(traded)
        trips = tripwires.evaluate(
            self._thresholds,
            now_ms=self._now_ms(),
            errors=self.errors,
            ingest_latencies_ms=selectors.ingest_latencies_ms(since=since) if traded else (),
            order_latencies_ms=selectors.order_latencies_ms(mode=self.config.mode, since=since),
            equity=[self._drawdown_peak(equity), equity.equity] if equity else (),
            newest_candle_close_ms=stalest_ms,
            stale_symbol=stalest_symbol,
        )
        if trips and killswitch_trip(trips) is not None:
            logger.warning("kill_switch_tripped", trips=[t.reason for t in trips])
        return [trip.tripwire for trip in trips]

    def _stalest_data(self, traded: list[int]) -> tuple[int | None, str]:
        """The stale-data tripwire's input: the symbol whose newest closed 1m candle is oldest,
        and when that candle closed. Each traded symbol counts: one feed that stops while the
        others go on is stale data for that symbol's rules. A symbol with no candle yet counts
        from the loop's start (a fresh install is not stale, a feed that never starts becomes
        so)."""
        closes = selectors.newest_candle_closes_ms(traded) if traded else {}
        if not closes:
            return None, ""
        ages = {name: close_ms or self._started_ms for name, close_ms in closes.items()}
        name = min(ages, key=lambda symbol: (ages[symbol], symbol))
        return ages[name], name

    def _drawdown_peak(self, latest: EquitySnapshot) -> Decimal:
        """The peak the drawdown tripwire measures from: the account's, or, once a person has
        released the switch, the highest equity since then. A release accepts the drawdown as
        it stood (otherwise the next check would trip again at once, on the same loss); from
        there a new fall of the limit trips it again."""
        switch = killswitch_view()
        if switch.state is not KillSwitchState.ACTIVE or switch.since is None:
            return latest.peak_equity
        since_release = selectors.peak_equity_since(self.config.mode, since=switch.since)
        return latest.equity if since_release is None else max(since_release, latest.equity)

    # Signals ---------------------------------------------------------------------------------

    def _spec(self, version: RuleConfigVersion) -> RuleSpec:
        spec = self._specs.get(version.pk)
        if spec is None:
            spec = self._specs[version.pk] = parse_spec(version.spec)
        return spec

    def _decide_safely(self, signal: Signal, report: CycleReport) -> None:
        try:
            self.decide(signal, report)
        except Deferred:
            raise
        except Exception:  # one bad signal must not stop the loop; it is logged and left
            logger.exception("signal_failed", signal=signal.pk)
            metrics.SIGNALS_DECIDED.labels(outcome="failed", reason="exception").inc()
            with transaction.atomic():
                if not Order.objects.filter(signal=signal).exists():
                    services.signal_skip(signal=signal, mode=self.config.mode, reason="internal_error")
        report.decided += 1

    def decide(self, signal: Signal, report: CycleReport) -> Order | None:
        """Turn one signal into an order row (sent or rejected) or a skip."""
        mode = self.config.mode
        version = signal.rule_version
        config = RuleConfig.objects.filter(pk=version.config_id).values("status", "active_version_id").first()
        if (
            not config
            or config["status"] != RuleConfig.Status.ACTIVE
            or config["active_version_id"] != version.pk
        ):
            services.signal_skip(now=self._now(), signal=signal, mode=mode, reason=VERSION_INACTIVE)
            report.skipped += 1
            return None
        spec = self._spec(version)
        symbol = signal.symbol
        timeframe = Timeframe(signal.timeframe)
        close_ms = ms_from_datetime(signal.open_time) + timeframe.ms
        reference = selectors.candle_close(symbol.pk, signal.timeframe, signal.open_time)
        position = selectors.position_state(selectors.position_of(mode, symbol_id=symbol.pk))
        side = decisions.triage(
            decisions.SignalFacts(
                action=signal.action,
                close_ms=close_ms,
                timeframe_ms=timeframe.ms,
                now_ms=self._now_ms(),
                reference=reference,
                position_quantity=position.quantity,
                pending=frozenset(selectors.open_order_sides(mode, symbol_id=symbol.pk)),
                max_age_s=self.config.max_signal_age_s,
            )
        )
        if isinstance(side, decisions.Skip):
            services.signal_skip(now=self._now(), signal=signal, mode=mode, reason=side.reason)
            report.skipped += 1
            return None
        assert reference is not None
        context: risk.RiskContext | None = None
        if side is Side.SELL:
            wanted = decisions.exit_order(position.quantity)
        else:
            context = self._context(symbol, reference)
            wanted = decisions.entry_order(
                reference=reference,
                sizing_quote=spec.sizing.quote_amount,
                sizing_equity_pct=spec.sizing.equity_pct,
                # Equity now: the free quote and every position at its mark (this one at the
                # signal's close), as the backtester values it.
                equity=context.free_quote + context.total_exposure,
                limits=limits_of(spec),
                position_value=context.position_value,
                total_exposure=context.total_exposure,
            )
        cid = client_order_id(
            symbol.exchange, symbol.symbol, signal.timeframe, close_ms, version.pk, signal.action
        )
        intent = OrderIntent(cid, symbol.symbol, wanted.side, OrderType.MARKET, wanted.quantity, reference)
        requested = wanted.requested
        return self.execute(
            intent,
            symbol=symbol,
            spec=spec,
            requested=requested,
            signal=signal,
            report=report,
            context=context,
        )

    def protective_exits(self, report: CycleReport) -> list[Order]:
        """Stop loss and take profit: a position whose last close has moved `stop_loss_pct`
        below (or `take_profit_pct` above) its average price is sold at market. The rule that
        covers the symbol sets the levels (the tightest, when several do). One attempt per
        position and candle (the client order id says which); none while HALTED, and none while
        a sell of the symbol is still open."""
        mode = self.config.mode
        if selectors.killswitch_state() is KillSwitchState.HALTED:
            return []
        held = {sid: p for sid, p in selectors.positions(mode).items() if p.quantity > 0}
        if not held:
            return []
        levels = self._protective_levels()
        symbols = {
            s.pk: s
            for s in Symbol.objects.filter(pk__in=held, exchange=self.config.exchange, symbol__in=set(levels))
        }
        if not symbols:
            return []
        selling = set(
            Order.objects.filter(
                mode=mode, symbol_id__in=symbols, side=Side.SELL, status__in=selectors.OPEN_STATUSES
            ).values_list("symbol_id", flat=True)
        )
        prices = selectors.last_prices(symbols, as_of=self._now())
        placed = []
        for symbol_id, symbol in sorted(symbols.items(), key=lambda item: item[1].symbol):
            position, last = held[symbol_id], prices.get(symbol_id)
            if symbol_id in selling or last is None or position.average_price <= 0:
                continue
            stop, take, version = levels[symbol.symbol]
            move = (last.price - position.average_price) / position.average_price * 100
            kind = "stop_loss" if stop is not None and move <= -stop else None
            kind = kind or ("take_profit" if take is not None and move >= take else None)
            if kind is None:
                continue
            episode = ms_from_datetime(position.last_trade_at) if position.last_trade_at else 0
            cid = client_order_id(symbol.exchange, symbol.symbol, kind, episode, last.close_ms)
            if Order.objects.filter(client_order_id=cid).exists():
                continue
            logger.info("protective_exit", symbol=symbol.symbol, kind=kind, move_pct=f"{move:.3f}")
            intent = OrderIntent(
                cid, symbol.symbol, Side.SELL, OrderType.MARKET, position.quantity, last.price
            )
            placed.append(
                self.execute(
                    intent,
                    symbol=symbol,
                    spec=self._spec(version),
                    requested=position.quantity,
                    signal=None,
                    rule_version=version,
                    report=report,
                )
            )
        return placed

    def _protective_levels(self) -> dict[str, tuple[Decimal | None, Decimal | None, RuleConfigVersion]]:
        """Symbol → (stop loss %, take profit %, the version that set the tighter stop)."""
        levels: dict[str, tuple[Decimal | None, Decimal | None, RuleConfigVersion]] = {}
        for version in active_versions():
            spec = self._spec(version)
            if spec.stop_loss_pct is None and spec.take_profit_pct is None:
                continue
            for name in version.config.symbols or []:
                stop, take, chosen = levels.get(name, (None, None, version))
                if spec.stop_loss_pct is not None and (stop is None or spec.stop_loss_pct < stop):
                    stop, chosen = spec.stop_loss_pct, version
                if spec.take_profit_pct is not None and (take is None or spec.take_profit_pct < take):
                    take = spec.take_profit_pct
                levels[name] = (stop, take, chosen)
        return levels

    def _context(self, symbol: Symbol, reference: Decimal) -> risk.RiskContext:
        mode = self.config.mode
        held = selectors.positions(mode, held_only=True)
        prices = selectors.last_prices(held, as_of=self._now())
        position = held.get(symbol.pk)
        exposure = Decimal(0)
        for symbol_id, row in held.items():
            mark = (
                reference
                if symbol_id == symbol.pk
                else (prices[symbol_id].price if symbol_id in prices else row.average_price)
            )
            exposure += row.quantity * mark
        balances = selectors.balances(mode)
        quote = balances.get(symbol.quote)
        base = balances.get(symbol.base)
        now = self._now()
        recent = selectors.recent_order_times(mode, since=now - timedelta(minutes=1))
        last_trade, last_loss, last_symbol_trade = selectors.last_trade_times(mode, symbol_id=symbol.pk)
        return risk.RiskContext(
            now_ms=self._now_ms(),
            kill_switch=selectors.killswitch_state(),
            symbol_trading=symbol.status == Symbol.Status.TRADING,
            position_quantity=position.quantity if position else Decimal(0),
            position_value=(position.quantity * reference) if position else Decimal(0),
            total_exposure=exposure,
            free_quote=quote.free if quote else Decimal(0),
            free_base=base.free if base else Decimal(0),
            taker_fee_bps=self.config.taker_fee_bps,
            last_trade_ms=ms_from_datetime(last_trade) if last_trade else None,
            last_symbol_trade_ms=ms_from_datetime(last_symbol_trade) if last_symbol_trade else None,
            last_loss_ms=ms_from_datetime(last_loss) if last_loss else None,
            symbol_order_times=[t for symbol_id, t in recent if symbol_id == symbol.pk],
            order_times=[t for _, t in recent],
            exchange_orders_10s=int(getattr(self.broker, "orders_10s", 0) or 0),
            exchange_used_weight=int(getattr(self.broker, "used_weight", 0) or 0),
        )

    def execute(
        self,
        intent: OrderIntent,
        *,
        symbol: Symbol,
        spec: RuleSpec,
        requested: Decimal,
        signal: Signal | None,
        rule_version: RuleConfigVersion | None = None,
        report: CycleReport | None = None,
        context: risk.RiskContext | None = None,
    ) -> Order:
        """Risk checks, the order row, then the broker. The row exists before the request leaves."""
        report = report or CycleReport()
        context = context or self._context(symbol, intent.reference_price)
        checked: OrderIntent | Refusal
        if symbol.exchange != self.config.exchange:
            checked = Refusal(
                UNKNOWN_SYMBOL,
                f"{symbol.symbol} is a symbol of {symbol.exchange}, not of {self.config.exchange}",
            )
        else:
            checked = risk.check(
                intent,
                filters=selectors.symbol_filters(symbol),
                limits=limits_of(spec),
                context=context,
                exchange=self.config.exchange_limits,
            )
        refusal = checked if isinstance(checked, Refusal) else None
        if refusal is not None and refusal.reason in DEFERRABLE:
            # Not a reason to refuse what the rule asked: only to wait a few seconds.
            metrics.SIGNALS_DECIDED.labels(outcome="deferred", reason=refusal.reason).inc()
            raise Deferred(refusal.reason)
        order = services.order_create(
            intent=intent if refusal else checked,  # type: ignore[arg-type]
            symbol=symbol,
            mode=self.config.mode,
            exchange=self.config.exchange,
            requested_quantity=requested,
            refusal=refusal,
            signal=signal,
            rule_version=signal.rule_version if signal else rule_version,
            now=self._now(),
        )
        metrics.SIGNALS_DECIDED.labels(outcome="ordered", reason=refusal.reason if refusal else "").inc()
        if refusal is not None:
            report.rejected += 1
            return order
        report.orders += 1
        assert isinstance(checked, OrderIntent)
        return self.send(order, checked, reducing=risk.reduces_position(checked, context))

    def send(self, order: Order, intent: OrderIntent, *, reducing: bool) -> Order:
        services.order_mark_sent(order=order, now=self._now())
        self._reducing_submit = reducing
        started = time.perf_counter()
        try:
            answer = self.broker.submit(intent)
        except Halted as error:
            return services.order_reject(order=order, reason=risk.HALTED, detail=str(error))
        except OrderRefused as error:
            self.on_broker_error("rejected", str(error))
            return services.order_reject(order=order, reason=error.reason, detail=str(error))
        except BrokerUnavailable as error:
            return services.order_reject(order=order, reason=error.reason, detail=str(error))
        except OutcomeUnknown as error:
            # Reconciliation asks the exchange about it; it is never resent blindly.
            logger.error("order_outcome_unknown", client_order_id=order.client_order_id, detail=str(error))
            return services.order_outcome_unknown(order=order, detail=str(error), now=self._now())
        except Exception as error:  # a bug, not an exchange answer: never let it stop the loop
            logger.exception("order_submit_failed", client_order_id=order.client_order_id)
            if self.config.mode == Mode.DRY_RUN:
                return services.order_reject(
                    order=order, reason="internal_error", detail=f"{type(error).__name__}"
                )
            # Live: whether it left is unknown; reconciliation asks the exchange by client id.
            return order
        finally:
            self._reducing_submit = False
        metrics.ORDER_LATENCY.labels(mode=self.config.mode).observe(time.perf_counter() - started)
        try:
            answer = with_fills(self.broker, order, answer)
        except BrokerError as error:  # the order stands; its fills come with reconciliation
            logger.warning("fills_not_fetched", client_order_id=order.client_order_id, detail=str(error))
        return services.order_apply_report(order=order, report=answer, acknowledged=True, now=self._now())

    def _fill_resting(self) -> int:
        assert isinstance(self.broker, DryRunBroker)
        found = self.broker.resting_fills()
        for order, answer in found:
            services.order_apply_report(order=order, report=answer, now=self._now())
        return len(found)

    def _publish_rejection_ratio(self) -> None:
        midnight = self._now().replace(hour=0, minute=0, second=0, microsecond=0)
        rejected, total = selectors.rejection_ratio(self.config.mode, since=midnight)
        metrics.REJECTION_RATIO.labels(mode=self.config.mode).set(rejected / total if total else 0.0)


def _canonical(signal: Signal) -> tuple[datetime, str, int, int]:
    """The order signals of one cycle are decided in (the backtester's too): close time, symbol,
    timeframe, rule version."""
    timeframe = Timeframe(signal.timeframe)
    return (
        signal.open_time + timedelta(milliseconds=timeframe.ms),
        signal.symbol.symbol,
        timeframe.ms,
        signal.rule_version_id,
    )


def _active_symbols() -> set[str]:
    names: set[str] = set()
    for symbols in RuleConfig.objects.filter(status=RuleConfig.Status.ACTIVE).values_list(
        "symbols", flat=True
    ):
        names.update(symbols or [])
    return names


def limits_of(spec: RuleSpec) -> risk.RiskLimits:
    return risk.RiskLimits(
        max_position_per_symbol=spec.limits.max_position_per_symbol,
        max_position_total=spec.limits.max_position_total,
        after_trade_s=spec.cooldowns.after_trade_s,
        after_loss_s=spec.cooldowns.after_loss_s,
        per_symbol_s=spec.cooldowns.per_symbol_s,
        per_symbol_per_minute=spec.order_rate_limits.per_symbol_per_minute,
        global_per_minute=spec.order_rate_limits.global_per_minute,
    )


def thresholds_of(spec: RuleSpec) -> tripwires.Thresholds:
    kill = spec.kill_switch
    return tripwires.Thresholds(
        error_count=kill.error_burst.count,
        error_window_s=kill.error_burst.window_s,
        latency_p95_ms=kill.latency_p95_ms,
        max_drawdown_pct=kill.max_drawdown_pct,
        stale_data_s=kill.stale_data_s,
        on_error_burst=KillSwitchState(kill.actions.error_burst),
        on_latency=KillSwitchState(kill.actions.latency),
        on_drawdown=KillSwitchState(kill.actions.drawdown),
        on_stale_data=KillSwitchState(kill.actions.stale_data),
    )
