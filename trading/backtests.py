"""Backtests: a rule version replayed over stored candles by the backtest engine
(`trading.core.backtest`), which makes the execution loop's decisions with the same code, and the
result stored as a `BacktestRun`.

Signals come from the rule's batch form (`rules.engine.evaluator.offline_signals`, equal to the
live incremental form by test) over each timeframe's stored candles, with `WARMUP_CANDLES` of
history before the range so indicators have converged. Orders fill on the 1m candles after
their decision (no lookahead). Bad input raises `BacktestInputError` naming what is wrong, before
anything is stored; a run that fails later is stored as failed, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings as django_settings
from django.utils import timezone

from marketdata.core.timeframes import Timeframe, ms_from_datetime
from marketdata.models import Candle, Symbol
from rules.engine.base import CandleSeries
from rules.engine.evaluator import RuleProgram, offline_signals
from rules.engine.spec import RuleSpec, SpecError, parse_spec
from rules.models import RuleConfig, RuleConfigVersion
from trading.core import backtest, performance
from trading.core.fills import FillModel
from trading.execution import limits_of
from trading.models import BacktestRun
from trading.selectors import symbol_filters

WARMUP_CANDLES = 500  # as the live evaluator's rebuild (rules.evaluation.REBUILD_CANDLES)
MAX_IMPUTED_PCT = Decimal(1)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class BacktestInputError(ValueError):
    """The request cannot run; the message names what is wrong."""


@dataclass(frozen=True)
class BacktestRequest:
    rule: str
    since: datetime
    until: datetime
    version: int | None = None  # None: the active version
    symbols: Sequence[str] | None = None  # None: the version's
    timeframes: Sequence[str] | None = None  # None: the spec's
    fee_bps: Decimal | None = None  # None: OASIS_FEE_BPS
    slippage_bps: Decimal | None = None  # None: OASIS_SLIPPAGE_BPS
    opening_balance: Decimal = Decimal(10_000)
    exchange: str | None = None  # None: OASIS_EXCHANGE
    max_imputed_pct: Decimal = MAX_IMPUTED_PCT


@dataclass(frozen=True)
class _Plan:
    version: RuleConfigVersion
    spec: RuleSpec
    exchange: str
    symbols: list[Symbol]
    timeframes: list[Timeframe]
    fill_model: FillModel
    candles: int
    imputed: int


def backtest_run(
    *, request: BacktestRequest, actor: str, progress: Progress | None = None
) -> tuple[BacktestRun, backtest.BacktestResult | None]:
    """Validate, replay and store. Returns the stored run and the engine's result (None when
    the run failed: the run row says why)."""
    plan = _plan(request)
    run = BacktestRun.objects.create(
        rule_version=plan.version,
        rule_checksum=plan.version.checksum,
        parameters=_parameters(request, plan),
        candles=plan.candles,
        imputed_candles=plan.imputed,
        created_by=actor,
        created_at=timezone.now(),
    )
    try:
        result, markets = _replay(request, plan, progress)
    except Exception as error:
        run.status = BacktestRun.Status.FAILED
        run.error = f"{type(error).__name__}: {error}"
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "error", "finished_at"])
        raise
    run.results = summary(
        result,
        markets=markets,
        opening_balance=request.opening_balance,
        quote_asset=plan.symbols[0].quote,
        start_ms=ms_from_datetime(request.since),
        end_ms=ms_from_datetime(request.until),
    )
    run.status = BacktestRun.Status.SUCCEEDED
    run.finished_at = timezone.now()
    run.save(update_fields=["results", "status", "finished_at"])
    return run, result


def _plan(request: BacktestRequest) -> _Plan:
    config = RuleConfig.objects.filter(name=request.rule).first()
    if config is None:
        known = ", ".join(RuleConfig.objects.order_by("name").values_list("name", flat=True)[:20]) or "none"
        raise BacktestInputError(f"no rule named {request.rule!r} (rules: {known})")
    if request.version is None:
        if config.active_version is None:
            raise BacktestInputError(f"rule {config.name!r} has no active version; name one with --version")
        version = config.active_version
    else:
        found = config.versions.filter(number=request.version).first()
        if found is None:
            latest = config.versions.order_by("-number").values_list("number", flat=True).first()
            raise BacktestInputError(
                f"rule {config.name!r} has no version {request.version} (latest: {latest})"
            )
        version = found
    try:
        spec = parse_spec(version.spec)
    except SpecError as error:  # stored versions were valid when saved; the schema may have moved
        raise BacktestInputError(
            f"version {version.number} of {config.name!r} no longer parses: {error}"
        ) from None

    since, until = request.since, request.until
    if since.tzinfo is None or until.tzinfo is None:
        raise BacktestInputError("--since and --until need a time zone (e.g. 2024-03-01T00:00Z)")
    if since >= until:
        raise BacktestInputError(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    exchange = request.exchange or django_settings.OASIS_EXCHANGE
    names = list(request.symbols) if request.symbols else list(version.symbols)
    symbols = list(Symbol.objects.filter(exchange=exchange, symbol__in=names).order_by("symbol"))
    missing = sorted(set(names) - {s.symbol for s in symbols})
    if missing:
        raise BacktestInputError(f"unknown symbol(s) on {exchange}: {', '.join(missing)}")
    allowed = {tf.value: tf for tf in spec.timeframes}
    wanted = list(request.timeframes) if request.timeframes else list(allowed)
    bad = [name for name in wanted if name not in allowed]
    if bad:
        raise BacktestInputError(
            f"timeframe(s) {', '.join(bad)} are not in the rule's spec ({', '.join(allowed)})"
        )
    fee = request.fee_bps if request.fee_bps is not None else django_settings.OASIS_FEE_BPS
    slippage = (
        request.slippage_bps if request.slippage_bps is not None else django_settings.OASIS_SLIPPAGE_BPS
    )
    try:
        model = FillModel(taker_fee_bps=fee, maker_fee_bps=fee, slippage_bps=slippage)
    except ValueError as error:
        raise BacktestInputError(
            str(error).replace("taker_fee_bps", "--fee").replace("slippage_bps", "--slippage")
        ) from None

    minutes = Candle.objects.filter(
        symbol__in=symbols, timeframe=Timeframe.M1.value, open_time__gte=since, open_time__lt=until
    )
    total = minutes.count()
    empty = [s.symbol for s in symbols if not minutes.filter(symbol=s).exists()]
    if empty:
        raise BacktestInputError(
            f"no 1m candles of {', '.join(empty)} on {exchange} between {since.isoformat()} and "
            f"{until.isoformat()}: backfill them first (manage.py backfill)"
        )
    imputed = minutes.filter(is_imputed=True).count()
    if total and Decimal(imputed) * 100 / total > request.max_imputed_pct:
        share = Decimal(imputed) * 100 / total
        raise BacktestInputError(
            f"{imputed} of {total} 1m candles in the range are imputed ({share:.2f} %), more than the "
            f"{request.max_imputed_pct} % allowed: a backtest on them would measure the imputation"
        )
    return _Plan(
        version=version,
        spec=spec,
        exchange=exchange,
        symbols=symbols,
        timeframes=[allowed[name] for name in wanted],
        fill_model=model,
        candles=total,
        imputed=imputed,
    )


def _parameters(request: BacktestRequest, plan: _Plan) -> dict[str, Any]:
    return {
        "rule": plan.version.config.name,
        "version": plan.version.number,
        "exchange": plan.exchange,
        "symbols": [s.symbol for s in plan.symbols],
        "timeframes": [tf.value for tf in plan.timeframes],
        "since": request.since.isoformat(),
        "until": request.until.isoformat(),
        "fee_bps": f"{plan.fill_model.taker_fee_bps}",
        "slippage_bps": f"{plan.fill_model.slippage_bps}",
        "opening_balance": f"{request.opening_balance}",
    }


def _replay(
    request: BacktestRequest, plan: _Plan, progress: Progress | None
) -> tuple[backtest.BacktestResult, dict[str, backtest.MarketSymbol]]:
    since_ms, until_ms = ms_from_datetime(request.since), ms_from_datetime(request.until)
    markets: dict[str, backtest.MarketSymbol] = {}
    events: list[backtest.SignalEvent] = []
    steps = len(plan.symbols) * (1 + len(plan.timeframes))
    done = 0
    for symbol in plan.symbols:
        rows = (
            Candle.objects.filter(
                symbol=symbol,
                timeframe=Timeframe.M1.value,
                open_time__gte=request.since,
                open_time__lt=request.until,
            )
            .order_by("open_time")
            .values_list("open_time", "open", "high", "low", "close")
        )
        markets[symbol.symbol] = backtest.MarketSymbol(
            symbol=symbol.symbol,
            base=symbol.base,
            quote=symbol.quote,
            filters=symbol_filters(symbol),
            minutes=[backtest.Minute(ms_from_datetime(t), o, h, low, c) for t, o, h, low, c in rows],
            trading=symbol.status == Symbol.Status.TRADING,
        )
        done += 1
        if progress:
            progress("candles", done, steps)
        for timeframe in plan.timeframes:
            events.extend(_signals(plan, symbol, timeframe, since_ms=since_ms, until_ms=until_ms))
            done += 1
            if progress:
                progress("signals", done, steps)
    settings = backtest.BacktestSettings(
        exchange=plan.exchange,
        limits=limits_of(plan.spec),
        sizing_quote=plan.spec.sizing.quote_amount,
        sizing_equity_pct=plan.spec.sizing.equity_pct,
        fill_model=plan.fill_model,
        opening_balance=request.opening_balance,
        quote_asset=plan.symbols[0].quote,
        stop_loss_pct=plan.spec.stop_loss_pct,
        take_profit_pct=plan.spec.take_profit_pct,
    )
    result = backtest.run(events, symbols=markets, settings=settings)
    if progress:
        progress("replay", steps, steps)
    return result, markets


def _signals(
    plan: _Plan, symbol: Symbol, timeframe: Timeframe, *, since_ms: int, until_ms: int
) -> list[backtest.SignalEvent]:
    return signal_events(
        spec=plan.spec,
        rule_version=plan.version.pk,
        symbol=symbol,
        timeframe=timeframe,
        since_ms=since_ms,
        until_ms=until_ms,
    )


def signal_events(
    *, spec: RuleSpec, rule_version: int, symbol: Symbol, timeframe: Timeframe, since_ms: int, until_ms: int
) -> list[backtest.SignalEvent]:
    """The rule's signals on `timeframe` candles that open at or after `since` and close by
    `until`, computed as the live evaluator does: from WARMUP_CANDLES of history before."""
    warm_from = datetime.fromtimestamp((since_ms - WARMUP_CANDLES * timeframe.ms) / 1000, tz=UTC)
    rows = list(
        Candle.objects.filter(
            symbol=symbol,
            timeframe=timeframe.value,
            is_closed=True,
            open_time__gte=warm_from,
            open_time__lt=datetime.fromtimestamp(until_ms / 1000, tz=UTC),
        )
        .order_by("open_time")
        .values_list("open_time", "open", "high", "low", "close", "volume")
    )
    if not rows:
        return []
    # Floats from here on: indicators compute in floats (rules.engine); the reference price of
    # each signal stays the candle's exact close.
    series = CandleSeries.from_columns(
        open_time_ms=[ms_from_datetime(r[0]) for r in rows],
        high=[float(r[2]) for r in rows],
        low=[float(r[3]) for r in rows],
        close=[float(r[4]) for r in rows],
        volume=[float(r[5]) for r in rows],
    )
    program = RuleProgram.from_spec(spec, timeframe)
    closes = {ms_from_datetime(r[0]): r[4] for r in rows}
    events = []
    for open_ms, action in offline_signals(program, series, [float(r[1]) for r in rows]):
        close_ms = open_ms + timeframe.ms
        if open_ms < since_ms or close_ms > until_ms:
            continue
        events.append(
            backtest.SignalEvent(
                close_ms=close_ms,
                symbol=symbol.symbol,
                timeframe=timeframe.value,
                timeframe_ms=timeframe.ms,
                action=action,
                reference=closes[open_ms],
                rule_version=rule_version,
            )
        )
    return events


def summary(
    result: backtest.BacktestResult,
    *,
    markets: dict[str, backtest.MarketSymbol],
    opening_balance: Decimal,
    quote_asset: str,
    start_ms: int,
    end_ms: int,
) -> dict[str, Any]:
    """The run's figures as stored (JSON-ready): the performance (trades, PnL, win rate, profit
    factor, drawdown, Sharpe, Sortino, exposure, fees, the equity curve), the counts of
    signals and orders with the reasons of refusals, and every fill (for the report's marks)."""
    traded = {o.symbol for o in result.orders if o.fill is not None}
    figures = performance.compute(
        performance.fills_of(result, quote_asset=quote_asset),
        candles={name: performance.CandleSeries.of_minutes(markets[name].minutes) for name in traded},
        opening_balance=opening_balance,
        start_ms=start_ms,
        end_ms=end_ms,
    )
    rejected: dict[str, int] = {}
    for order in result.orders:
        if order.reject_reason:
            rejected[order.reject_reason] = rejected.get(order.reject_reason, 0) + 1
    skipped: dict[str, int] = {}
    for decision in result.decisions:
        if decision.outcome == "skipped":
            skipped[decision.reason] = skipped.get(decision.reason, 0) + 1
    return {
        **figures.to_json(),
        "signals": len(result.decisions),
        "skipped": skipped,
        "orders": len(result.orders),
        "filled": sum(1 for o in result.orders if o.fill is not None),
        "rejected": rejected,
        "fills": [
            {
                "symbol": o.symbol,
                "side": o.side.value,
                "time_ms": o.fill.time_ms,
                "price": f"{o.fill.price:f}",
                "quantity": f"{o.fill.quantity:f}",
                "reason": o.protective or ("signal" if o.signal else ""),
            }
            for o in result.orders
            if o.fill is not None
        ],
    }
