"""Backtests: a rule version replayed over stored candles by the backtest engine
(`trading.core.backtest`), which makes the execution loop's decisions with the same code, and the
result stored as a `BacktestRun`.

Signals come from the rule's batch form (`rules.engine.evaluator.offline_signals`, equal to the
live incremental form by test) over each timeframe's stored candles, with `WARMUP_CANDLES` of
history before the range so indicators have converged. Orders fill on the 1m candles after
their decision (no lookahead). Bad input raises `BacktestInputError` naming what is wrong, before
anything is stored; a run that fails later is stored as failed, with the reason.

Each symbol's 1m candles are read once, while the request is checked (their counts are checks):
one statement a symbol, as columns (`_StoredCandles`), with the exact prices kept as the stored
text and made Decimals only for the minutes the engine reads. A year of 1m candles through the
ORM, a Decimal and a datetime a value, took seconds before any backtesting (docs/benchmarks.md).
"""

from __future__ import annotations

import gc
import itertools
import logging
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson
import psycopg
from django.conf import settings as django_settings
from django.db import connection
from django.db.models import JSONField, Value
from django.db.models.functions import Cast
from django.utils import timezone

from marketdata.core.timeframes import Timeframe, ms_from_datetime, utc_from_ms
from marketdata.models import Candle, Symbol
from rules.engine.base import CandleSeries
from rules.engine.evaluator import RuleProgram, offline_signals
from rules.engine.spec import RuleSpec, SpecError, parse_spec
from rules.models import RuleConfig, RuleConfigVersion
from trading.core import backtest, decimal_text, performance
from trading.core.fills import FillModel
from trading.execution import limits_of
from trading.models import BacktestRun
from trading.selectors import symbol_filters

logger = logging.getLogger(__name__)

WARMUP_CANDLES = 500  # as the live evaluator's rebuild (rules.evaluation.REBUILD_CANDLES)

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
    # None: the rule version's drift_tolerance.imputed_pct (1 % unless its spec says otherwise)
    max_imputed_pct: Decimal | None = None


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
    minutes: dict[int, _StoredCandles]  # by symbol id: the 1m candles, read once by the plan


def backtest_run(
    *, request: BacktestRequest, actor: str, progress: Progress | None = None
) -> tuple[BacktestRun, backtest.BacktestResult | None]:
    """Validate, replay and store. Returns the stored run and the engine's result (None when
    the run failed: the run row says why)."""
    with _no_cyclic_collection():
        return _backtest_run(request, actor, progress)


@contextmanager
def _no_cyclic_collection() -> Iterator[None]:
    """Python's cyclic garbage collector paused for the run, as it was before afterwards.

    A year's run allocates a few hundred thousand objects that live until it ends (signals,
    orders, fills, decisions, trades), and each of them triggers collections that walk all of
    them again: a tenth of the run's time, to find nothing, since they hold no reference cycles
    (reference counting frees them). Results do not depend on it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _backtest_run(
    request: BacktestRequest, actor: str, progress: Progress | None
) -> tuple[BacktestRun, backtest.BacktestResult | None]:
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
    results = summary(
        result,
        markets=markets,
        opening_balance=request.opening_balance,
        quote_asset=plan.symbols[0].quote,
        start_ms=ms_from_datetime(request.since),
        end_ms=ms_from_datetime(request.until),
    )
    finished_at = timezone.now()
    BacktestRun.objects.filter(pk=run.pk).update(
        results=_json_value(results), status=BacktestRun.Status.SUCCEEDED, finished_at=finished_at
    )
    run.results, run.status, run.finished_at = results, BacktestRun.Status.SUCCEEDED, finished_at
    return run, result


def _json_value(value: dict[str, Any]) -> Any:
    """`value` as a JSON field's new content. On PostgreSQL it is encoded by orjson and cast to
    jsonb: a year's results are 6 MB of JSON, which the standard encoder took 50-60 ms to write
    (orjson: about 10). The stored document is the same: jsonb keeps values, not their spelling
    (`1e-05` and `1e-5` are one number, key order and spaces are its own). One difference, in a
    case that does not arise: a float that is not finite is stored as null, where the standard
    encoder wrote `NaN`, which PostgreSQL refuses; the results' floats are all finite."""
    if connection.vendor != "postgresql":
        return value
    return Cast(Value(orjson.dumps(value).decode()), output_field=JSONField())


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

    # The 1m candles are read once, here: their counts are the checks below, and the replay
    # runs on them (the engine's minutes from `since`, the 1m signals from the warm-up before).
    minutes = {symbol.pk: _load_minutes(symbol, since=since, until=until) for symbol in symbols}
    first_ms = _ceil_ms(since)  # the first candle opening at or after `since`
    counts = {pk: stored.counts_from(first_ms) for pk, stored in minutes.items()}
    counts = {pk: counted for pk, counted in counts.items() if counted[0]}
    total = sum(n for n, _ in counts.values())
    empty = [s.symbol for s in symbols if s.pk not in counts]
    if empty:
        raise BacktestInputError(
            f"no 1m candles of {', '.join(empty)} on {exchange} between {since.isoformat()} and "
            f"{until.isoformat()}: backfill them first (manage.py backfill)"
        )
    imputed = sum(n for _, n in counts.values())
    if request.max_imputed_pct is not None:
        most, whose = request.max_imputed_pct, "the request"
    else:
        most = spec.drift_tolerance.imputed_pct
        whose = f"version {version.number} of {config.name!r} (drift_tolerance.imputed_pct)"
    if total and Decimal(imputed) * 100 / total > most:
        share = Decimal(imputed) * 100 / total
        raise BacktestInputError(
            f"{imputed} of {total} 1m candles in the range are imputed ({share:.2f} %), more than the "
            f"{most} % {whose} allows: a backtest on them would measure the imputation"
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
        minutes=minutes,
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
        stored = plan.minutes[symbol.pk]
        markets[symbol.symbol] = backtest.MarketSymbol(
            symbol=symbol.symbol,
            base=symbol.base,
            quote=symbol.quote,
            filters=symbol_filters(symbol),
            minutes=stored.minutes_from(_ceil_ms(request.since)),
            trading=symbol.status == Symbol.Status.TRADING,
        )
        done += 1
        if progress:
            progress("candles", done, steps)
        for timeframe in plan.timeframes:
            preloaded = stored if timeframe is Timeframe.M1 else None
            events.extend(
                _signals(plan, symbol, timeframe, since_ms=since_ms, until_ms=until_ms, stored=preloaded)
            )
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


def _load_minutes(symbol: Symbol, *, since: datetime, until: datetime) -> _StoredCandles:
    """The symbol's 1m candles opening before `until`, from WARMUP_CANDLES minutes before
    `since` (as `signal_events` reads them)."""
    warm_from = utc_from_ms(ms_from_datetime(since) - WARMUP_CANDLES * Timeframe.M1.ms)
    return _stored_candles(symbol.pk, Timeframe.M1, since=warm_from, until=until)


def _ceil_ms(moment: datetime) -> int:
    """The first whole millisecond at or after `moment`: a candle (whose open is a whole
    millisecond) opens at or after `moment` exactly when it opens at or after this."""
    micros = (moment - _EPOCH) // timedelta(microseconds=1)
    return -(-micros // 1000)


def _signals(
    plan: _Plan,
    symbol: Symbol,
    timeframe: Timeframe,
    *,
    since_ms: int,
    until_ms: int,
    stored: _StoredCandles | None = None,
) -> list[backtest.SignalEvent]:
    return signal_events(
        spec=plan.spec,
        rule_version=plan.version.pk,
        symbol=symbol,
        timeframe=timeframe,
        since_ms=since_ms,
        until_ms=until_ms,
        stored=stored,
    )


def signal_events(
    *,
    spec: RuleSpec,
    rule_version: int,
    symbol: Symbol,
    timeframe: Timeframe,
    since_ms: int,
    until_ms: int,
    stored: _StoredCandles | None = None,
) -> list[backtest.SignalEvent]:
    """The rule's signals on `timeframe` candles that open at or after `since` and close by
    `until`, computed as the live evaluator does: from WARMUP_CANDLES of history before.
    `stored`: those candles already read (from at most WARMUP_CANDLES before `since`)."""
    warm_ms = since_ms - WARMUP_CANDLES * timeframe.ms
    if stored is None:
        stored = _stored_candles(
            symbol.pk, timeframe, since=utc_from_ms(warm_ms), until=utc_from_ms(until_ms)
        )
    # Closed candles from the warm-up on (the live evaluator's history): all of them, unless the
    # caller read a wider span.
    use = stored.closed & (stored.open_ms >= warm_ms) & (stored.open_ms < until_ms)
    if not use.any():
        return []
    rows: slice | npt.NDArray[np.intp] = slice(None) if use.all() else np.flatnonzero(use)
    # Floats from here on: indicators compute in floats (rules.engine); the reference price of
    # each signal stays the candle's exact close.
    series = CandleSeries.from_columns(
        open_time_ms=stored.open_ms[rows],
        high=stored.high[rows],
        low=stored.low[rows],
        close=stored.close[rows],
        volume=stored.volume[rows],
    )
    program = RuleProgram.from_spec(spec, timeframe)
    found = offline_signals(program, series, stored.open[rows])
    at = np.searchsorted(stored.open_ms, np.array([open_ms for open_ms, _ in found], dtype=np.int64))
    events = []
    for (open_ms, action), row in zip(found, at.tolist(), strict=True):
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
                reference=stored.exact_close(row),
                rule_version=rule_version,
            )
        )
    return events


Int64s = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
_PG_EPOCH_MS = 946_684_800_000  # PostgreSQL's binary timestamps count µs from 2000-01-01 UTC
# The open times as one binary string; the flags only where they are not what nearly every
# stored candle has (closed, not imputed), as the open times of the exceptions: a year's flags
# per row cost PostgreSQL 70 ms of concatenation, these filters a few.
_STORED_TEMPLATE = """
SELECT string_agg(timestamptz_send(open_time), ''::bytea),
       string_agg(timestamptz_send(open_time), ''::bytea) FILTER (WHERE NOT is_closed),
       string_agg(timestamptz_send(open_time), ''::bytea) FILTER (WHERE is_imputed),
       string_agg(concat_ws(E'\\t', open, high, low, close, volume), E'\\n')
FROM (
    SELECT open_time, is_closed, is_imputed, open, high, low, close, volume FROM marketdata_candle
    WHERE symbol_id = {} AND timeframe = {} AND open_time >= {} AND open_time < {}
    ORDER BY open_time
) AS stored
"""
_STORED_SQL = _STORED_TEMPLATE.format("%s", "%s", "%s", "%s")  # Django's cursor
_PART_SQL = _STORED_TEMPLATE.format(
    "$1::bigint", "$2", "$3::timestamptz", "$4::timestamptz"
).encode()  # libpq's
_TIMES = np.dtype(">i8")  # timestamptz_send: µs since PostgreSQL's epoch, big-endian
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, eq=False)
class _StoredCandles:
    """One symbol's stored candles of one timeframe over a span, read once, as columns: open
    times, whether closed, the prices and volume as float64 for indicators and curves, and the
    exact prices as the stored decimal text, made into Decimals only for the rows asked for
    (`exact`): a year of 1m candles is 2.6 million numbers, of which a backtest reads a few.

    The floats are the text read as float64, correctly rounded, so each is `float(Decimal(text))`
    exactly, as the rest of the app converts (the indicators and the equity curve see the same
    numbers the ORM path gave them)."""

    open_ms: Int64s
    closed: npt.NDArray[np.bool_]
    imputed: npt.NDArray[np.bool_]
    open: Floats
    high: Floats
    low: Floats
    close: Floats
    volume: Floats
    exact_row: Callable[[int], tuple[Decimal, Decimal, Decimal, Decimal]]
    exact_close_of: Callable[[int], Decimal] | None = None  # None: exact_row's close

    @classmethod
    def of_columns(
        cls,
        open_ms: Int64s,
        flags: npt.NDArray[np.bool_],
        values: Floats,
        exact_row: Callable[[int], tuple[Decimal, Decimal, Decimal, Decimal]],
        exact_close_of: Callable[[int], Decimal] | None = None,
    ) -> _StoredCandles:
        """From `flags` of shape (2, rows), is_closed and is_imputed, and `values` of shape
        (5, rows): open, high, low, close, volume."""
        o, h, low, c, v = values
        return cls(open_ms, flags[0], flags[1], o, h, low, c, v, exact_row, exact_close_of)

    def counts_from(self, open_ms: int) -> tuple[int, int]:
        """How many candles open at or after `open_ms`, and how many of those are imputed."""
        first = int(np.searchsorted(self.open_ms, open_ms))
        return self.open_ms.size - first, int(np.count_nonzero(self.imputed[first:]))

    def exact(self, row: int) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        """Open, high, low and close of `row`, exactly as stored."""
        return self.exact_row(row)

    def exact_close(self, row: int) -> Decimal:
        """The close of `row`, exactly as stored (a signal's reference price)."""
        if self.exact_close_of is None:
            return self.exact_row(row)[3]
        return self.exact_close_of(row)

    def minutes_from(self, open_ms: int) -> backtest.MinuteColumns:
        """The candles opening at or after `open_ms`, as the engine's minutes."""
        first = int(np.searchsorted(self.open_ms, open_ms))

        def exact(row: int) -> tuple[Decimal, Decimal, Decimal, Decimal]:
            return self.exact_row(first + row)

        return backtest.MinuteColumns(self.open_ms[first:], self.close[first:], exact)


def _stored_candles(
    symbol_id: int, timeframe: Timeframe, *, since: datetime, until: datetime
) -> _StoredCandles:
    """Candles opening in [since, until), in time order."""
    if connection.vendor != "postgresql":
        return _stored_candles_orm(symbol_id, timeframe, since, until)
    # One row a span: the fixed-width columns as one binary string (read with numpy in place),
    # the decimals as one text. Row by row (the ORM, or COPY, which libpq hands over a row at a
    # time) a year costs seconds in Python before any backtesting.
    with _without_jit():
        reading = _stored_parts(symbol_id, timeframe, since, until)
        try:
            read = [_parse_part(*part) for part in reading]
        finally:
            reading.close()  # now, not when the traceback goes: a part may be in flight
    parts = [part for part in read if part is not None]
    if not parts:
        return _StoredCandles.of_columns(
            np.empty(0, np.int64), np.empty((2, 0), bool), np.empty((5, 0)), _no_row
        )
    open_ms = np.concatenate([part.open_ms for part in parts])
    flags = np.concatenate([part.flags for part in parts], axis=1)
    values = np.concatenate([part.values for part in parts], axis=1)
    text = b"\n".join(part.text for part in parts)
    # Each part's lines, where they sit in the joined text.
    shifts = np.cumsum([0] + [len(part.text) + 1 for part in parts[:-1]])
    count = open_ms.size
    starts: list[int] = np.concatenate([p.starts + at for p, at in zip(parts, shifts, strict=True)]).tolist()
    ends: list[int] = np.concatenate([p.ends + at for p, at in zip(parts, shifts, strict=True)]).tolist()
    if count > 1 and not bool(np.all(np.diff(open_ms) > 0)):
        # The subquery's order is what PostgreSQL feeds an aggregate in practice, not a promise:
        # should it ever differ, put the rows (and their lines) in order here.
        order = np.argsort(open_ms, kind="stable")
        open_ms, flags, values = open_ms[order], flags[:, order], values[:, order]
        starts, ends = [starts[i] for i in order], [ends[i] for i in order]

    def exact_row(row: int) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        o, h, low, c, _ = text[starts[row] : ends[row]].decode("ascii").split("\t")
        return Decimal(o), Decimal(h), Decimal(low), Decimal(c)

    def exact_close(row: int) -> Decimal:
        return Decimal(text[starts[row] : ends[row]].decode("ascii").split("\t", 4)[3])

    return _StoredCandles.of_columns(open_ms, flags, values, exact_row, exact_close)


@contextmanager
def _without_jit() -> Iterator[None]:
    """PostgreSQL's JIT off for the session while candles are read, then as it was. A read of
    100,000 candles or more is costed above `jit_above_cost`, and compiling its expressions took
    70-80 ms a statement, for a single pass over an index that it does not make faster."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('jit'), set_config('jit', 'off', false)")
        (before, _) = cursor.fetchone()
    try:
        yield
    finally:
        # In a transaction that failed, the setting goes back with it (and nothing else runs).
        if connection.connection.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('jit', %s, false)", [before])


_PART_MINUTES = 120_000  # a span read in parts of about this many minutes (a year: 4)


def _stored_parts(
    symbol_id: int, timeframe: Timeframe, since: datetime, until: datetime
) -> Generator[_Read, None, None]:
    """The span's `_Read`s in time order, one a part. A long span is read in parts, each asked
    for before the previous one is parsed: PostgreSQL builds the next part while this process
    parses the last (the server's share of a year's read, 0.42 s, is most of it).

    libpq runs one statement at a time per connection but does not make the client wait for
    it: parts are sent with the connection's own libpq handle (Django's cursor, which waits for
    each result, cannot overlap). Outside a transaction, every other part goes to a second
    connection of this read's own (`_reader`), so that two server processes build parts at once
    (each statement reads its own snapshot either way, as any autocommit statement does).
    Inside one, all parts go through Django's connection, whose transaction may hold candles
    no other connection can see yet. Such statements do not appear in Django's query log."""
    span_minutes = (until - since) // timedelta(minutes=1)
    count = max(1, min(8, span_minutes // _PART_MINUTES))
    bounds = [since + (until - since) * i / count for i in range(count)] + [until]
    connection.ensure_connection()
    pgconn = getattr(connection.connection, "pgconn", None)
    if count == 1 or pgconn is None:  # one statement through Django's cursor
        with connection.cursor() as cursor:
            for low, high in itertools.pairwise(bounds):
                cursor.execute(_STORED_SQL, [symbol_id, timeframe.value, low, high])
                times, unclosed, imputed, text = cursor.fetchone()
                yield _Read(times, unclosed, imputed, None if text is None else text.encode("ascii"))
        return
    second = None if connection.in_atomic_block else _reader()
    handles = [pgconn] if second is None else [pgconn, second]
    in_flight: list[bool] = [False] * len(handles)

    def send(index: int) -> None:
        low, high = bounds[index], bounds[index + 1]
        parameters = [str(symbol_id), timeframe.value, low.isoformat(), high.isoformat()]
        handle = index % len(handles)
        handles[handle].send_query_params(_PART_SQL, [p.encode() for p in parameters], result_format=1)
        in_flight[handle] = True

    def receive(handle: int) -> _Read:
        conn = handles[handle]
        result, error = conn.get_result(), ""
        while result is not None:  # one result, then None: the statement is over
            if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
                error = (result.error_message or b"").decode(errors="replace")
            else:
                read = _Read(*(result.get_value(0, column) for column in range(4)))
            result = conn.get_result()
        in_flight[handle] = False
        if error:
            raise psycopg.DatabaseError(f"reading candles of symbol {symbol_id}: {error}")
        return read

    try:
        for index in range(min(len(handles), count)):
            send(index)
        for index in range(count):
            read = receive(index % len(handles))
            if index + len(handles) < count:
                send(index + len(handles))
            yield read
    finally:
        for handle, busy in enumerate(in_flight):
            if busy:  # abandoned (an error while parsing): leave the connection idle
                receive(handle)
        if second is not None:
            second.finish()


def _reader() -> psycopg.pq.abc.PGconn | None:
    """A second connection to Django's database for one read (closed after it), with the JIT
    off as `_without_jit` has it for Django's; None (and the read goes through one connection)
    when it cannot be opened: the server's connection limit, say."""
    # Django's parameters less its own (cursor factory, adapters, prepare threshold): what
    # libpq takes.
    libpq = {option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults()}
    parameters = {
        key: value
        for key, value in connection.get_connection_params().items()
        if key in libpq and isinstance(value, str | int)
    }
    conninfo = psycopg.conninfo.make_conninfo("", **parameters)
    reader = psycopg.pq.PGconn.connect(conninfo.encode())
    if reader.status != psycopg.pq.ConnStatus.OK:
        logger.warning(
            "backtest: candles read through one connection, a second did not open: %s",
            (reader.error_message or b"").decode(errors="replace").strip(),
        )
        reader.finish()
        return None
    reader.exec_(b"SET jit = off")
    return reader


class _Read(NamedTuple):
    """One part of a read as PostgreSQL sends it (None: no such candle in the part)."""

    times: bytes | None  # every open time
    unclosed: bytes | None  # the open times of candles not closed
    imputed: bytes | None  # the open times of imputed candles
    text: bytes | None  # the decimals, a line a candle


def _among(open_us: Int64s, exceptions: bytes | None) -> npt.NDArray[np.bool_]:
    """Which of `open_us` are among the open times in `exceptions`."""
    if exceptions is None:
        return np.zeros(open_us.size, dtype=bool)
    return np.isin(open_us, np.frombuffer(exceptions, dtype=_TIMES).astype(np.int64))


class _Part(NamedTuple):
    open_ms: Int64s
    flags: npt.NDArray[np.bool_]  # (2, rows): is_closed, is_imputed
    values: Floats  # (5, rows): open, high, low, close, volume
    text: bytes  # the decimals as stored, a line a row
    starts: Int64s  # where each row's line starts in `text`
    ends: Int64s  # and ends


def _parse_part(
    times: bytes | None, unclosed: bytes | None, imputed: bytes | None, text: bytes | None
) -> _Part | None:
    """One part of a read as columns; None for a part with no candle."""
    if times is None or text is None:
        return None
    open_us = np.frombuffer(times, dtype=_TIMES).astype(np.int64)
    open_ms = open_us // 1000 + _PG_EPOCH_MS
    flags = np.stack([~_among(open_us, unclosed), _among(open_us, imputed)])
    # numeric_out writes plain digits (no exponent, no spaces), tab- and newline-separated; they
    # are read as the correctly rounded floats Python's float() gives.
    table = decimal_text.read_table(text, 5)
    if table.starts.size != open_ms.size:
        raise ValueError(f"read {table.starts.size} lines of prices for {open_ms.size} candles")
    values, starts, ends = table.values, table.starts, table.ends
    return _Part(open_ms, flags, values, text, starts, ends)


def _stored_candles_orm(
    symbol_id: int, timeframe: Timeframe, since: datetime, until: datetime
) -> _StoredCandles:
    """`_stored_candles` through the ORM (databases other than PostgreSQL)."""
    rows = list(
        Candle.objects.filter(
            symbol_id=symbol_id, timeframe=timeframe.value, open_time__gte=since, open_time__lt=until
        )
        .order_by("open_time")
        .values_list("open_time", "is_closed", "is_imputed", "open", "high", "low", "close", "volume")
    )
    prices = [(o, h, low, c) for _, _, _, o, h, low, c, _ in rows]
    return _StoredCandles.of_columns(
        np.array([ms_from_datetime(r[0]) for r in rows], dtype=np.int64),
        np.array([r[1:3] for r in rows], dtype=bool).reshape(len(rows), 2).T.copy(),
        np.array([[float(v) for v in r[3:]] for r in rows], dtype=np.float64).reshape(len(rows), 5).T.copy(),
        prices.__getitem__,
    )


def _no_row(row: int) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    raise IndexError(f"no candle {row}: none stored")


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
                "price": performance.exact_text(o.fill.price),
                "quantity": performance.exact_text(o.fill.quantity),
                "reason": o.protective or ("signal" if o.signal else ""),
            }
            for o in result.orders
            if o.fill is not None
        ],
    }
