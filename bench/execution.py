"""Order execution: signal → order in dry-run (a burst), live round trips against the simulator,
and the rejection ratio of a replayed day, on PostgreSQL.

1. *Burst, dry-run.* S symbols (the simulator's, synced with their filters; candles backfilled
   from it over REST) each get one enter signal on the same closed minute from one active rule;
   one `ExecutionLoop.cycle()` decides them all. Latency of a signal = from the start of the cycle
   to the return of its `decide` (its last write — the order's fill, position and balances —
   committed: every service is its own transaction). Then the exits of the same S symbols on the
   next minute (the loop's clock moved on one minute, as a replay's does), a second burst.
   Queries are counted with `connection.execute_wrapper` (CaptureQueriesContext keeps at most
   9,000 queries, fewer than one burst makes).
2. *Live, against the simulator* (SimExchangeThread in this process, real sockets, ccxt with the
   simulator's test keys): N market orders straight through `LiveBroker.submit` (BTCUSDT,
   alternately buying and selling 0.001), then N orders through the whole loop in live mode, one
   signal per cycle, alternately an entry and the exit of the same symbol (signal → risk → order
   row → ccxt → simulator → fills → position), on N/2 symbols. A symbol's entry and exit are on
   the same candle, so they come from two active rules (a signal is unique per candle and rule).
3. *Rejection ratio of a replayed day.* The simulator replays the real 1m BTCUSDT candles from
   2023-03-01 00:00 (ETHUSDT beside it is the simulator's synthetic series); both are backfilled;
   after 60 minutes of warm-up, `--minutes` minutes (01:00 to 01:00 the next day by default):
   each minute's closes go through the evaluator (one EMA 9/21 cross rule), then one loop cycle on
   the candles' clock, in dry-run with the settings' fill model and every default limit.

The exchange's order-count check (50 orders / 10 s, 80 % used) would refuse all but 40 orders of
a 200-signal burst, and the loop counts its own orders too: `--orders-per-10s` raises that limit
for parts 1 and 2 (the check still runs; part 3 keeps the default).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/oasis_bench_exec \
        REDIS_URL=redis://127.0.0.1:6379/8 .venv/bin/python bench/execution.py --runs 3
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oasis_site.settings")
os.environ.setdefault("OASIS_ENV", "test")
os.environ.setdefault("OASIS_LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import override_settings, setup_databases, teardown_databases  # noqa: E402
from waffle.models import Flag  # noqa: E402

from marketdata.backfill import backfill_range  # noqa: E402
from marketdata.core.timeframes import ms_from_datetime  # noqa: E402
from marketdata.ingest.derived import closed_candle_event  # noqa: E402
from marketdata.models import Candle, Symbol  # noqa: E402
from marketdata.selectors import candle_as_kline  # noqa: E402
from marketdata.services import CandleWrite  # noqa: E402
from marketdata.simulator.config import SimConfig  # noqa: E402
from marketdata.simulator.server import SimExchangeThread  # noqa: E402
from marketdata.simulator.symbols import generated_names  # noqa: E402
from marketdata.tests.shared_data import REAL_CANDLES_CSV  # noqa: E402
from rules.evaluation import SignalEvaluator  # noqa: E402
from rules.models import RuleConfig, Signal  # noqa: E402
from rules.services import rule_config_create, rule_version_activate  # noqa: E402
from trading.brokers.dry_run import DryRunBroker  # noqa: E402
from trading.brokers.live import LiveBroker  # noqa: E402
from trading.core.risk import ExchangeLimits  # noqa: E402
from trading.core.types import OrderIntent, OrderStatus, OrderType, Side  # noqa: E402
from trading.credentials import ExchangeCredentials  # noqa: E402
from trading.execution import CycleReport, ExecutionConfig, ExecutionLoop  # noqa: E402
from trading.models import Order, Position, SignalDecision  # noqa: E402
from trading.runner import fill_model, paper_account_open  # noqa: E402

MINUTE = timedelta(minutes=1)
KEY, SECRET = "sim-key", "sim-secret"  # the simulator's well-known test keys
REPLAY_DAY = datetime(2023, 3, 1, tzinfo=UTC)  # the first day of REAL_CANDLES_CSV
REPLAY_WARM_MINUTES = 60  # history before the replayed minutes (the EMAs' warm-up)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Clock:
    """The loop's clock: `base` (epoch seconds) when set, then running with wall time."""

    def __init__(self, base: float) -> None:
        self.set(base)

    def set(self, base: float) -> None:
        self._base, self._t0 = base, time.monotonic()

    def __call__(self) -> float:
        return self._base + (time.monotonic() - self._t0)


class TimedLoop(ExecutionLoop):
    """The execution loop, noting when each `decide` returned (its writes committed)."""

    decided_at: list[float]

    def decide(self, signal: Signal, report: CycleReport) -> Order | None:
        try:
            return super().decide(signal, report)
        finally:
            self.decided_at.append(time.perf_counter())


@contextmanager
def query_counter() -> Iterator[Counter[str]]:
    """Queries on the default connection, counted by their first words (and `total`); the
    time spent in them in `µs` (commits are not statements: not included)."""
    counts: Counter[str] = Counter()

    def count(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        counts["total"] += 1
        counts[_kind(sql)] += 1
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            counts["µs"] += round((time.perf_counter() - started) * 1e6)

    with connection.execute_wrapper(count):
        yield counts


def _kind(sql: str) -> str:
    words = sql.replace('"', "").split()
    upper = [word.upper() for word in words]
    for keyword in ("FROM", "INTO", "UPDATE"):
        if keyword in upper[:-1]:
            return f"{upper[0]} {words[upper.index(keyword) + 1]}"
    return upper[0] if upper else "?"


@contextmanager
def simulator(config: SimConfig) -> Iterator[SimExchangeThread]:
    """A simulator in this process, the `sim` exchange's settings pointed at it, its symbols
    synced (the filters the loop checks orders against come from it)."""
    with SimExchangeThread(config) as sim:
        host, port = sim.address
        urls = {"sim": {"rest": f"http://{host}:{port}", "ws": f"ws://{host}:{port}"}}
        with override_settings(OASIS_EXCHANGE_URLS=urls):
            cache.clear()
            call_command("sync_symbols", exchange="sim", verbosity=0, stdout=io.StringIO())
            yield sim


def rule(name: str, symbols: list[str], spec: dict[str, Any], *, flag: bool = False) -> RuleConfig:
    config = rule_config_create(name=name, description="", symbols=symbols, spec=spec, author="system:bench")
    rule_version_activate(version=config.versions.get(), actor="system:bench")
    if flag:  # the evaluator only evaluates rules whose flag is on; the loop does not look
        row = Flag.objects.get(name=config.flag_name)
        row.everyone = True
        row.save()
        row.flush()
    config.refresh_from_db()
    return config


def backfill(names: list[str], since: datetime, until: datetime) -> None:
    for name in names:
        backfill_range(exchange="sim", symbol=name, timeframe="1m", since=since, until=until)


def closed_minute_of_all(names: list[str]) -> datetime:
    """The newest 1m open time that every one of `names` has a candle for."""
    return min(
        Candle.objects.filter(symbol__exchange="sim", symbol__symbol=name, timeframe="1m")
        .order_by("-open_time")
        .values_list("open_time", flat=True)[0]
        for name in names
    )


def signals_on(
    symbols: list[Symbol], open_time: datetime, config: RuleConfig, action: str, computed: datetime
) -> list[Signal]:
    assert config.active_version is not None
    return Signal.objects.bulk_create(
        [
            Signal(
                symbol=symbol,
                timeframe="1m",
                open_time=open_time,
                rule_version=config.active_version,
                action=action,
                indicators={"fast": 1.0, "slow": 1.0},
                computed_at=computed,
            )
            for symbol in symbols
        ]
    )


def limits_spec(symbol_count: int, quote: str) -> dict[str, Any]:
    return {
        "sizing": {"quote_amount": quote},
        "limits": {
            "max_position_per_symbol": "1000",
            "max_position_total": str(max(1000, symbol_count * 1000)),
        },
        "order_rate_limits": {"per_symbol_per_minute": 2, "global_per_minute": 1200},
    }


EMA_CROSS = {
    "timeframes": ["1m"],
    "indicators": {"fast": {"kind": "ema", "period": 9}, "slow": {"kind": "ema", "period": 21}},
    "entry": "fast crosses_above slow",
    "exit": "fast crosses_below slow",
}


# 1. Burst, dry-run ---------------------------------------------------------------------------


def burst_cycle(loop: TimedLoop, signals: int) -> dict[str, float]:
    loop.decided_at = []
    with query_counter() as queries:
        started = time.perf_counter()
        report = loop.cycle()
        ended = time.perf_counter()
    if report.decided != signals or report.orders != signals:
        raise SystemExit(f"burst: {signals} signals gave {report}")
    latencies = [(at - started) * 1000 for at in loop.decided_at]
    each = [(b - a) * 1000 for a, b in zip([started, *loop.decided_at], loop.decided_at, strict=False)]
    return {
        "p50 ms": percentile(latencies, 0.5),
        "p95 ms": percentile(latencies, 0.95),
        "p99 ms": percentile(latencies, 0.99),
        "signals/s": signals / (ended - started),
        "queries/signal": queries["total"] / signals,
        "query ms/signal": queries["µs"] / 1000 / signals,
        "2nd decide ms": each[1],  # the first one also holds the cycle's own start
        "last decide ms": each[-1],
        "cycle ms": (ended - started) * 1000,
    }


def run_burst(signals: int, orders_per_10s: int) -> dict[str, float]:
    names = generated_names(signals)
    with simulator(SimConfig(port=0, symbols=tuple(names), history_minutes=60)):
        now = datetime.now(tz=UTC).replace(second=0, microsecond=0)
        backfill(names, now - 5 * MINUTE, now - MINUTE)
        symbols = list(Symbol.objects.filter(exchange="sim", symbol__in=names).order_by("symbol"))
        config = rule("burst", names, {**EMA_CROSS, **limits_spec(signals, "100")})
        paper_account_open(quote_asset="USDT", amount=Decimal(10_000_000))
        newest = closed_minute_of_all(names)
        # Orders fill at the next minute's open (no lookahead), so both bursts' next candles
        # must be stored: the entries on newest - 2, the exits on newest - 1.
        first, second = newest - 2 * MINUTE, newest - MINUTE
        clock = Clock((first + MINUTE).timestamp() + 1)
        model = fill_model()
        loop = TimedLoop(
            broker_factory=lambda _loop: DryRunBroker(
                exchange="sim", fill_model=model, clock_ms=lambda: int(clock() * 1000)
            ),
            config=ExecutionConfig(
                mode="dry_run",
                exchange="sim",
                taker_fee_bps=model.taker_fee_bps,
                batch=signals,
                exchange_limits=ExchangeLimits(orders_per_10s=orders_per_10s),
            ),
            clock=clock,
        )
        loop.start()
        # Enter: the signals of the first minute, computed half a second after it closed.
        signals_on(symbols, first, config, "enter", datetime.fromtimestamp(clock() - 0.5, tz=UTC))
        enter = burst_cycle(loop, signals)
        held = Position.objects.filter(mode="dry_run", quantity__gt=0).count()
        if held != signals:
            raise SystemExit(f"burst: {held} positions after {signals} entries")
        # Exit: the next minute's signals, the loop's clock one minute on.
        clock.set((second + MINUTE).timestamp() + 1)
        signals_on(symbols, second, config, "exit", datetime.fromtimestamp(clock() - 0.5, tz=UTC))
        leave = burst_cycle(loop, signals)
        if Position.objects.filter(mode="dry_run", quantity__gt=0).exists():
            raise SystemExit("burst: positions left after the exits")
    return {**{f"enter {k}": v for k, v in enter.items()}, **{f"exit {k}": v for k, v in leave.items()}}


# 2. Live round trips -------------------------------------------------------------------------


def live_loop(sim: SimExchangeThread, clock: Clock, orders_per_10s: int) -> TimedLoop:
    host, port = sim.address
    loop = TimedLoop(
        broker_factory=lambda loop: LiveBroker(
            exchange="sim",
            credentials=ExchangeCredentials(api_key=KEY, secret=SECRET),
            rest_url=f"http://{host}:{port}",
            gate=loop.gate,
            on_error=loop.on_broker_error,
        ),
        config=ExecutionConfig(
            mode="live", exchange="sim", exchange_limits=ExchangeLimits(orders_per_10s=orders_per_10s)
        ),
        clock=clock,
    )
    loop.decided_at = []
    return loop


def run_live(orders: int, orders_per_10s: int) -> dict[str, float]:
    pairs = orders // 2
    names = generated_names(max(pairs, 2))
    with simulator(SimConfig(port=0, symbols=tuple(names), history_minutes=60)) as sim:
        # Straight through the broker: the gate (a kill-switch read), signing, HTTP, parsing.
        loop = live_loop(sim, Clock(time.time()), orders_per_10s)
        loop.start()  # markets loaded, reconciled
        submit = []
        for n in range(orders):
            side = Side.BUY if n % 2 == 0 else Side.SELL
            intent = OrderIntent(
                f"bench-{n:05d}", "BTCUSDT", side, OrderType.MARKET, Decimal("0.001"), Decimal(60_000)
            )
            started = time.perf_counter()
            answer = loop.broker.submit(intent)
            submit.append((time.perf_counter() - started) * 1000)
            if answer.status is not OrderStatus.FILLED:
                raise SystemExit(f"live submit: {answer}")

        # Through the loop: one signal per cycle, entry then exit of the same symbol.
        now = datetime.now(tz=UTC).replace(second=0, microsecond=0)
        backfill(names[:pairs], now - 3 * MINUTE, now - MINUTE)
        symbols = {s.symbol: s for s in Symbol.objects.filter(exchange="sim", symbol__in=names[:pairs])}
        spec = {**EMA_CROSS, **limits_spec(pairs, "20")}
        enter_rule = rule("live-in", names[:pairs], spec)
        exit_rule = rule("live-out", names[:pairs], spec)
        newest = closed_minute_of_all(names[:pairs])
        clock = Clock((newest + MINUTE).timestamp() + 1)
        loop = live_loop(sim, clock, orders_per_10s)
        loop.start()  # a fresh loop: markets loaded, balances reconciled with the simulator's
        cycle, decide = [], []
        for name in names[:pairs]:
            for config, action in ((enter_rule, "enter"), (exit_rule, "exit")):
                signals_on([symbols[name]], newest, config, action, datetime.fromtimestamp(clock(), tz=UTC))
                loop.decided_at = []
                started = time.perf_counter()
                report = loop.cycle()
                ended = time.perf_counter()
                if report.orders != 1:
                    raise SystemExit(f"live loop, {action} {name}: {report}")
                decide.append((loop.decided_at[0] - started) * 1000)
                cycle.append((ended - started) * 1000)
        filled = Order.objects.filter(mode="live", status=OrderStatus.FILLED).count()
        if filled != 2 * pairs or Position.objects.filter(mode="live", quantity__gt=0).exists():
            raise SystemExit(f"live loop: {filled} of {2 * pairs} orders filled, or positions left")
    return {
        "submit p50 ms": percentile(submit, 0.5),
        "submit p95 ms": percentile(submit, 0.95),
        "submit p99 ms": percentile(submit, 0.99),
        "loop p50 ms": percentile(decide, 0.5),
        "loop p95 ms": percentile(decide, 0.95),
        "loop cycle p50 ms": percentile(cycle, 0.5),
    }


# 3. Rejection ratio of a replayed day --------------------------------------------------------


def run_replay(minutes: int) -> tuple[dict[str, float], Counter[str]]:
    if not REAL_CANDLES_CSV.exists():
        raise SystemExit(f"the real candles are not here: {REAL_CANDLES_CSV}")
    names = ["BTCUSDT", "ETHUSDT"]
    history = REPLAY_WARM_MINUTES + minutes
    start = REPLAY_DAY + timedelta(minutes=history)  # the CSV's first row is the history's first
    config = SimConfig(
        port=0,
        symbols=tuple(names),
        start_ms=ms_from_datetime(start),
        history_minutes=history,
        replay_path=REAL_CANDLES_CSV,
    )
    with simulator(config):
        backfill(names, REPLAY_DAY, start - MINUTE)
        limits = {"max_position_per_symbol": "1000", "max_position_total": "5000"}
        rule("ema", names, {**EMA_CROSS, "sizing": {"quote_amount": "250"}, "limits": limits}, flag=True)
        paper_account_open(quote_asset="USDT", amount=settings.OASIS_DRYRUN_BALANCE)
        symbols = {s.pk: s for s in Symbol.objects.filter(exchange="sim", symbol__in=names)}
        replay_from = start - timedelta(minutes=minutes)
        by_minute: dict[datetime, list[Candle]] = {}
        for candle in Candle.objects.filter(
            symbol_id__in=symbols, timeframe="1m", open_time__gte=replay_from
        ).order_by("open_time"):
            by_minute.setdefault(candle.open_time, []).append(candle)
        clock = Clock(replay_from.timestamp())
        model = fill_model()
        loop = ExecutionLoop(
            broker_factory=lambda _loop: DryRunBroker(
                exchange="sim", fill_model=model, clock_ms=lambda: int(clock() * 1000)
            ),
            config=ExecutionConfig(mode="dry_run", exchange="sim", taker_fee_bps=model.taker_fee_bps),
            clock=clock,
        )
        evaluator = SignalEvaluator()
        loop.start()
        cycles = []
        started = time.perf_counter()
        for open_time, closing in sorted(by_minute.items()):
            events = [
                closed_candle_event(
                    CandleWrite(c.symbol_id, candle_as_kline(c, symbol=symbols[c.symbol_id].symbol), "ws"),
                    symbol=symbols[c.symbol_id].symbol,
                    committed_at=0.0,
                )
                for c in closing
            ]
            evaluator.on_closes(events)
            clock.set((open_time + MINUTE).timestamp() + 1)
            before = time.perf_counter()
            loop.cycle()
            cycles.append((time.perf_counter() - before) * 1000)
        took = time.perf_counter() - started
        orders = Order.objects.filter(mode="dry_run")
        rejected = orders.filter(status=OrderStatus.REJECTED)
        reasons = Counter(rejected.values_list("reject_reason", flat=True))
        skipped = Counter(SignalDecision.objects.filter(outcome="skipped").values_list("reason", flat=True))
        total, refused = orders.count(), rejected.count()
        figures = {
            "minutes": float(len(by_minute)),
            "signals": float(Signal.objects.count()),
            "skipped": float(sum(skipped.values())),
            "orders": float(total),
            "rejected": float(refused),
            "rejection %": 100 * refused / total if total else 0.0,
            "cycle p50 ms": percentile(cycles, 0.5),
            "replay s": took,
        }
    return figures, reasons + Counter({f"skip:{k}": v for k, v in skipped.items()})


# Runs ----------------------------------------------------------------------------------------


@contextmanager
def scratch_database() -> Iterator[None]:
    old = setup_databases(verbosity=0, interactive=False)
    try:
        cache.clear()
        yield
    finally:
        teardown_databases(old, verbosity=0)


def show(title: str, figures: dict[str, float]) -> str:
    return f"{title}: " + ", ".join(f"{k} {v:,.2f}" for k, v in figures.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=200, help="signals (and symbols) of the burst")
    parser.add_argument("--orders", type=int, default=200, help="live orders, each way of timing")
    parser.add_argument("--minutes", type=int, default=1440, help="minutes of the replayed day")
    parser.add_argument("--orders-per-10s", type=int, default=100_000, help="exchange limit, parts 1-2")
    parser.add_argument("--parts", default="burst,live,replay")
    parser.add_argument("--runs", type=int, default=3, help="runs of each part; the median is quoted")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("bench/execution.py measures PostgreSQL: set DATABASE_URL=postgres://...")
    parts: dict[str, Callable[[], dict[str, float]]] = {
        "burst": lambda: run_burst(args.signals, args.orders_per_10s),
        "live": lambda: run_live(args.orders, args.orders_per_10s),
    }
    for part in args.parts.split(","):
        runs: list[dict[str, float]] = []
        for n in range(args.runs):
            with scratch_database():
                if part == "replay":
                    figures, reasons = run_replay(args.minutes)
                    print(f"{part}, run {n + 1}, reasons: {dict(reasons.most_common())}", flush=True)
                else:
                    figures = parts[part]()
            runs.append(figures)
            print(show(f"{part}, run {n + 1}", figures), flush=True)
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(show(f"{part}, median of {args.runs}", median), flush=True)


if __name__ == "__main__":
    main()
