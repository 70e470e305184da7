"""Writes of market data: symbols with their filter history, and closed candles."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from operator import lt
from typing import Any

import psycopg
from django.db import connection, transaction
from django.utils import timezone

from audit.services import audit_record
from marketdata.core.klines import Kline
from marketdata.core.timeframes import Timeframe
from marketdata.models import Candle, Symbol, SymbolFilterSnapshot

_CANDLE_COLUMNS = (
    "symbol_id",
    "timeframe",
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "trade_count",
    "is_closed",
    "is_imputed",
    "imputed_inputs",
    "source",
    "ingested_at",
)

# A closed candle is final: a duplicate or late frame changes nothing. Two exceptions: an
# imputed candle gives way to real data for the same bucket, and a derived candle gives way to
# its recomputation from fewer imputed inputs (after a backfill found real data).
_ON_CONFLICT = """
ON CONFLICT (symbol_id, timeframe, open_time) DO UPDATE SET
    open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
    volume = EXCLUDED.volume, quote_volume = EXCLUDED.quote_volume,
    trade_count = EXCLUDED.trade_count, is_imputed = EXCLUDED.is_imputed,
    imputed_inputs = EXCLUDED.imputed_inputs, source = EXCLUDED.source, ingested_at = EXCLUDED.ingested_at
WHERE (marketdata_candle.is_imputed AND NOT EXCLUDED.is_imputed)
    OR (marketdata_candle.source = 'resampled' AND EXCLUDED.source = 'resampled'
        AND EXCLUDED.imputed_inputs < marketdata_candle.imputed_inputs)
"""

_COLUMN_LIST = ", ".join(_CANDLE_COLUMNS)
_INSERT_FROM_STAGING = (
    f"INSERT INTO marketdata_candle ({_COLUMN_LIST}) "  # noqa: S608 - module constants only
    f"SELECT {_COLUMN_LIST} FROM marketdata_candle_staging {_ON_CONFLICT}"
)
_CREATE_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS marketdata_candle_staging ON COMMIT DELETE ROWS AS "  # noqa: S608
    f"SELECT {_COLUMN_LIST} FROM marketdata_candle WITH NO DATA"
)
# Small batches (a burst of live closes) go as one INSERT … SELECT FROM unnest(arrays) with
# the arrays bound server-side: one statement and one round trip, atomic on its own. Larger
# batches (backfills) go through COPY into a staging table, cheaper per row at that size.
_ARRAYS_MAX_ROWS = 2000
_INSERT_FROM_ARRAYS = (
    f"INSERT INTO marketdata_candle ({_COLUMN_LIST}) "  # noqa: S608 - module constants only
    "SELECT symbol_id, timeframe, 'epoch'::timestamptz + open_ms * interval '1 millisecond', "
    "open::numeric, high::numeric, low::numeric, close::numeric, volume::numeric, quote_volume::numeric, "
    "trades, true, imputed_inputs > 0, imputed_inputs, source, %(ingested_at)s FROM unnest("
    "%(symbol_id)b::int8[], %(timeframe)b::text[], %(open_ms)b::int8[], %(open)b::text[], %(high)b::text[], "
    "%(low)b::text[], %(close)b::text[], %(volume)b::text[], %(quote_volume)b::text[], %(trades)b::int8[], "
    "%(imputed_inputs)b::int8[], %(source)b::text[]) AS batch(symbol_id, timeframe, open_ms, open, high, "
    f"low, close, volume, quote_volume, trades, imputed_inputs, source) {_ON_CONFLICT}"
)
_INSERT_ONE = (
    f"INSERT INTO marketdata_candle ({_COLUMN_LIST}) "  # noqa: S608 - module constants only
    f"VALUES ({', '.join(['%s'] * len(_CANDLE_COLUMNS))}) {_ON_CONFLICT}"
)


@dataclass(frozen=True)
class CandleWrite:
    """A closed candle to persist. `imputed_inputs` counts the imputed candles behind it (see
    `Candle.imputed_inputs`); left at None it is 1 for an imputed candle and 0 otherwise."""

    symbol_id: int
    kline: Kline
    source: str
    imputed: bool = False
    imputed_inputs: int | None = None

    @property
    def imputed_count(self) -> int:
        if self.imputed_inputs is not None:
            return self.imputed_inputs
        return 1 if self.imputed else 0


def candles_upsert_closed(*, writes: Sequence[CandleWrite]) -> int:
    """Persist closed candles in one statement; return how many rows were written.

    Idempotent: a candle already stored is left as it is (unless it was imputed and this one is
    real), so replays, duplicates and late frames never create a second row nor overwrite
    a closed candle. Forming candles are refused: only closed candles are persisted.
    """
    distinct = _closed_one_per_bucket(writes)
    if not distinct:
        return 0
    now = timezone.now()
    if connection.vendor == "postgresql":
        if len(distinct) <= _ARRAYS_MAX_ROWS:
            return _upsert_postgresql_arrays(distinct, now)
        return _upsert_postgresql(distinct, now)
    return _upsert_generic(distinct, now)


async def candles_upsert_closed_async(
    *, conn: psycopg.AsyncConnection[Any], writes: Sequence[CandleWrite]
) -> int:
    """`candles_upsert_closed` on PostgreSQL through an asyncio connection in autocommit mode:
    the ingest process's writer, which runs on the same event loop as the streams so that a
    burst of closes is read and written without threads contending for the interpreter.

    Same statement, same idempotence. Batches larger than one statement's share are written
    in one transaction.
    """
    distinct = _closed_one_per_bucket(writes)
    if not distinct:
        return 0
    now = timezone.now()
    if len(distinct) <= _ARRAYS_MAX_ROWS:
        cursor = await conn.execute(_INSERT_FROM_ARRAYS, _array_params(distinct, now))
        return int(cursor.rowcount)
    written = 0
    async with conn.transaction():
        for start in range(0, len(distinct), _ARRAYS_MAX_ROWS):
            chunk = distinct[start : start + _ARRAYS_MAX_ROWS]
            cursor = await conn.execute(_INSERT_FROM_ARRAYS, _array_params(chunk, now))
            written += int(cursor.rowcount)
    return written


def _closed_one_per_bucket(writes: Sequence[CandleWrite]) -> list[CandleWrite]:
    for write in writes:
        if not write.kline.closed:
            raise ValueError(
                f"{write.kline.symbol} {write.kline.timeframe} {write.kline.open_time_ms} is not closed"
            )
    return _one_per_bucket(writes)


def _one_per_bucket(writes: Sequence[CandleWrite]) -> list[CandleWrite]:
    """One write per (symbol, timeframe, open time): the first of those with the fewest imputed
    inputs (a real candle before an imputed one)."""
    chosen: dict[tuple[int, str, int], CandleWrite] = {}
    for write in writes:
        key = (write.symbol_id, write.kline.timeframe.value, write.kline.open_time_ms)
        current = chosen.get(key)
        if current is None or write.imputed_count < current.imputed_count:
            chosen[key] = write
    return list(chosen.values())


def _row(write: CandleWrite, now: datetime) -> tuple[Any, ...]:
    kline = write.kline
    return (
        write.symbol_id,
        kline.timeframe.value,
        datetime.fromtimestamp(kline.open_time_ms / 1000, tz=UTC),
        kline.open,
        kline.high,
        kline.low,
        kline.close,
        kline.volume,
        kline.quote_volume,
        kline.trades,
        True,
        write.imputed_count > 0,
        write.imputed_count,
        write.source,
        now,
    )


def _copy_text(writes: Sequence[CandleWrite], now: datetime) -> bytes:
    """COPY's text format, built directly: several times faster than adapting row by row.

    Every value is a number, a known timeframe/source word or a timestamp, so nothing needs
    escaping. Decimals go as `str()`, exact (an exponent such as "1E-8" is read by numeric's
    input with the same value and scale) and cheaper than `format(…, "f")`; open times as in
    `_open_time_texts`.
    """
    ingested = now.isoformat()
    opened_texts = _open_time_texts([write.kline.open_time_ms for write in writes])
    lines = []
    for write, opened in zip(writes, opened_texts, strict=True):
        k = write.kline
        imputed = write.imputed_count
        lines.append(
            f"{write.symbol_id}\t{k.timeframe.value}\t{opened}\t{k.open}\t{k.high}\t{k.low}\t{k.close}\t"
            f"{k.volume}\t{k.quote_volume}\t{k.trades}\tt\t{'t' if imputed else 'f'}\t{imputed}\t"
            f"{write.source}\t{ingested}\n"
        )
    return "".join(lines).encode()


def _open_time_texts(open_times_ms: Sequence[int]) -> list[str]:
    """Open times as timestamptz text: from a per-day prefix and a table of the minutes of a day,
    ~5x cheaper than `datetime.isoformat()` for the whole-minute times candles have."""
    days: dict[int, str] = {}
    minutes = _MINUTES_OF_DAY
    texts = []
    for ms in open_times_ms:
        day, in_day = divmod(ms, 86_400_000)
        prefix = days.get(day)
        if prefix is None:
            prefix = days[day] = datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%d ")
        if in_day % 60_000:
            texts.append(datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat())
        else:
            texts.append(f"{prefix}{minutes[in_day // 60_000]}:00+00")
    return texts


_MINUTES_OF_DAY = [f"{hour:02d}:{minute:02d}" for hour in range(24) for minute in range(60)]
_COPY_CHUNK_ROWS = 10_000
_ANY_STORED_IN_SPANS = (
    "SELECT EXISTS (SELECT 1 FROM unnest(%s::int8[], %s::text[], %s::timestamptz[], %s::timestamptz[]) "
    "AS span(symbol_id, timeframe, first, last) JOIN marketdata_candle AS c ON c.symbol_id = span.symbol_id "
    "AND c.timeframe = span.timeframe AND c.open_time BETWEEN span.first AND span.last)"
)

Spans = Mapping[tuple[int, str], tuple[int, int]]  # (symbol id, timeframe) → (first, last) open time


def _write_spans(writes: Sequence[CandleWrite]) -> dict[tuple[int, str], tuple[int, int]]:
    spans: dict[tuple[int, str], tuple[int, int]] = {}
    for write in writes:
        key = (write.symbol_id, write.kline.timeframe.value)
        opened = write.kline.open_time_ms
        span = spans.get(key)
        if span is None:
            spans[key] = (opened, opened)
        elif opened < span[0]:
            spans[key] = (opened, span[1])
        elif opened > span[1]:
            spans[key] = (span[0], opened)
    return spans


def _any_stored_in_spans(cursor: Any, spans: Spans) -> bool:
    """Whether any candle is stored between the first and last open time of any stream in
    `spans` (one indexed probe per stream, in one statement)."""
    keys, bounds = list(spans), list(spans.values())
    cursor.execute(
        _ANY_STORED_IN_SPANS,
        [
            [symbol_id for symbol_id, _ in keys],
            [timeframe for _, timeframe in keys],
            [datetime.fromtimestamp(first / 1000, tz=UTC) for first, _ in bounds],
            [datetime.fromtimestamp(last / 1000, tz=UTC) for _, last in bounds],
        ],
    )
    return bool(cursor.fetchone()[0])


def _upsert_postgresql(writes: Sequence[CandleWrite], now: datetime) -> int:
    return _copy_or_upsert(
        _write_spans(writes),
        len(writes),
        lambda start, stop: _copy_text(writes[start:stop], now),
    )


def _copy_or_upsert(spans: Spans, count: int, text: Callable[[int, int], bytes]) -> int:
    """Write `count` rows, distinct buckets, whose COPY text `text(start, stop)` gives by chunks.

    Into a range with nothing stored (a backfill), every row is new: COPY straight into the
    table, in chunks so that the server parses one while the next is built. A row that arrives
    meanwhile (the live ingest) makes the COPY fail on the unique index; the savepoint undoes it
    and the upsert below runs instead, so the outcome is the upsert's in every case. Otherwise
    COPY into a session-local staging table, then one INSERT … SELECT … ON CONFLICT.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        if not _any_stored_in_spans(cursor, spans):
            try:
                with (
                    transaction.atomic(),
                    cursor.cursor.copy(f"COPY marketdata_candle ({_COLUMN_LIST}) FROM STDIN") as copy,
                ):
                    for start in range(0, count, _COPY_CHUNK_ROWS):
                        copy.write(text(start, min(start + _COPY_CHUNK_ROWS, count)))
            except psycopg.errors.UniqueViolation:
                pass
            else:
                return count
        cursor.execute(_CREATE_STAGING)
        with cursor.cursor.copy(f"COPY marketdata_candle_staging ({_COLUMN_LIST}) FROM STDIN") as copy:
            for start in range(0, count, _COPY_CHUNK_ROWS):
                copy.write(text(start, min(start + _COPY_CHUNK_ROWS, count)))
        cursor.execute(_INSERT_FROM_STAGING)
        return int(cursor.rowcount)


@dataclass(frozen=True)
class CandleRows:
    """Closed candles of one stream as columns, for writing in bulk without a `Kline` or a
    `CandleWrite` per row (a backfill's pages, a refresh's derived candles).

    Open times strictly increasing. The decimal columns are text that PostgreSQL's numeric
    input reads exactly, with nothing COPY would need escaped: the exchange's plain strings
    (`marketdata.core.klines.RestRow`) or `FixedPointColumn.strings()`. `imputed_inputs` None
    means 0 for every row (real candles).
    """

    symbol_id: int
    timeframe: Timeframe
    source: str
    open_time_ms: Sequence[int]
    open: Sequence[str]
    high: Sequence[str]
    low: Sequence[str]
    close: Sequence[str]
    volume: Sequence[str]
    quote_volume: Sequence[str]
    trades: Sequence[int]
    imputed_inputs: Sequence[int] | None = None

    def __len__(self) -> int:
        return len(self.open_time_ms)

    def writes(self) -> list[CandleWrite]:
        """The rows as `CandleWrite`s (for the row-by-row path and for consumers of closes)."""
        counts = self.imputed_inputs if self.imputed_inputs is not None else [0] * len(self)
        symbol = str(self.symbol_id)
        return [
            CandleWrite(
                self.symbol_id,
                Kline(symbol, self.timeframe, t, Decimal(o), Decimal(h), Decimal(low), Decimal(c), Decimal(v),
                      Decimal(q), n, True),
                self.source,
                imputed=imputed > 0,
                imputed_inputs=imputed,
            )
            for t, o, h, low, c, v, q, n, imputed in zip(
                self.open_time_ms, self.open, self.high, self.low, self.close, self.volume,
                self.quote_volume, self.trades, counts, strict=True,
            )
        ]  # fmt: skip


def candles_upsert_rows(*, rows: CandleRows) -> int:
    """`candles_upsert_closed` for candles held as columns: the same rows written, the same
    upsert rule, the same stored text; return how many rows were written.

    On PostgreSQL the COPY text (or, for a few rows, the arrays of the one-statement insert) is
    built straight from the columns. Elsewhere the rows go through `candles_upsert_closed`.
    """
    count = len(rows)
    if not count:
        return 0
    opened = rows.open_time_ms
    if not all(map(lt, opened, opened[1:])):
        raise ValueError("open times must be strictly increasing")
    if connection.vendor != "postgresql":
        return candles_upsert_closed(writes=rows.writes())
    now = timezone.now()
    if count <= _ARRAYS_MAX_ROWS:
        return _execute_arrays(_rows_array_params(rows, now))
    spans = {(rows.symbol_id, rows.timeframe.value): (opened[0], opened[-1])}
    return _copy_or_upsert(spans, count, lambda start, stop: _rows_copy_text(rows, start, stop, now))


def _rows_copy_text(rows: CandleRows, start: int, stop: int, now: datetime) -> bytes:
    """COPY text of rows start … stop-1 (as `_copy_text` writes it)."""
    head = f"{rows.symbol_id}\t{rows.timeframe.value}\t"
    columns = (
        _open_time_texts(rows.open_time_ms[start:stop]), rows.open[start:stop], rows.high[start:stop],
        rows.low[start:stop], rows.close[start:stop], rows.volume[start:stop], rows.quote_volume[start:stop],
        rows.trades[start:stop],
    )  # fmt: skip
    ingested = now.isoformat()
    if rows.imputed_inputs is None:
        tail = f"\tt\tf\t0\t{rows.source}\t{ingested}\n"
        lines = [
            f"{head}{t}\t{o}\t{h}\t{low}\t{c}\t{v}\t{q}\t{n}{tail}"
            for t, o, h, low, c, v, q, n in zip(*columns, strict=True)
        ]
    else:
        tail = f"\t{rows.source}\t{ingested}\n"
        lines = [
            f"{head}{t}\t{o}\t{h}\t{low}\t{c}\t{v}\t{q}\t{n}\tt\t{'t' if i else 'f'}\t{i}{tail}"
            for t, o, h, low, c, v, q, n, i in zip(*columns, rows.imputed_inputs[start:stop], strict=True)
        ]
    return "".join(lines).encode()


def _rows_array_params(rows: CandleRows, now: datetime) -> dict[str, Any]:
    """The parameters of `_INSERT_FROM_ARRAYS` for `rows`."""
    count = len(rows)
    return {
        "symbol_id": [rows.symbol_id] * count,
        "timeframe": [rows.timeframe.value] * count,
        "open_ms": list(rows.open_time_ms),
        "open": list(rows.open),
        "high": list(rows.high),
        "low": list(rows.low),
        "close": list(rows.close),
        "volume": list(rows.volume),
        "quote_volume": list(rows.quote_volume),
        "trades": list(rows.trades),
        "imputed_inputs": [0] * count if rows.imputed_inputs is None else list(rows.imputed_inputs),
        "source": [rows.source] * count,
        "ingested_at": now,
    }


def _array_params(writes: Sequence[CandleWrite], now: datetime) -> dict[str, Any]:
    """The parameters of `_INSERT_FROM_ARRAYS`: one array per column."""
    params: dict[str, Any] = {
        name: []
        for name in (
            "symbol_id", "timeframe", "open_ms", "open", "high", "low", "close", "volume", "quote_volume",
            "trades", "imputed_inputs", "source",
        )
    }  # fmt: skip
    columns = list(params.values())
    for write in writes:
        k = write.kline
        values = (
            write.symbol_id,
            k.timeframe.value,
            k.open_time_ms,
            # str() of a Decimal is exact (it may use an exponent, "1E-8", which PostgreSQL's
            # numeric input reads with the same value and scale) and cheaper than format().
            str(k.open),
            str(k.high),
            str(k.low),
            str(k.close),
            str(k.volume),
            str(k.quote_volume),
            k.trades,
            write.imputed_count,
            write.source,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    params["ingested_at"] = now
    return params


def _upsert_postgresql_arrays(writes: Sequence[CandleWrite], now: datetime) -> int:
    return _execute_arrays(_array_params(writes, now))


def _execute_arrays(params: dict[str, Any]) -> int:
    # Django's own cursor binds parameters client-side, rendering every array element as SQL
    # text in Python; a psycopg cursor on the same connection binds them server-side (and
    # prepares the statement after a few runs). Errors still come out as Django's.
    with connection.wrap_database_errors:
        connection.ensure_connection()
        raw = connection.connection
        assert raw is not None
        with psycopg.Cursor(raw) as cursor:
            cursor.execute(_INSERT_FROM_ARRAYS, params)
            return int(cursor.rowcount)


def _upsert_generic(writes: Sequence[CandleWrite], now: datetime) -> int:
    # Values adapted by the model's fields, as the ORM would: SQLite compares times as text, so
    # they must be stored in exactly the form the ORM's lookups use.
    decimal_field = Candle._meta.get_field("open")
    time_field = Candle._meta.get_field("open_time")
    written = 0
    with transaction.atomic(), connection.cursor() as cursor:
        for write in writes:
            row = list(_row(write, now))
            row[2] = time_field.get_db_prep_value(row[2], connection)
            row[-1] = time_field.get_db_prep_value(row[-1], connection)
            for index in range(3, 9):
                row[index] = decimal_field.get_db_prep_value(row[index], connection)
            cursor.execute(_INSERT_ONE, row)
            written += cursor.rowcount
    return written


@dataclass(frozen=True)
class SymbolSpec:
    """A symbol as an exchange describes it (exchangeInfo / ccxt market)."""

    exchange: str
    symbol: str
    base: str
    quote: str
    status: str
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal
    filters: list[dict[str, Any]] | dict[str, Any]


_FILTER_FIELDS = ("status", "tick_size", "step_size", "min_qty", "max_qty", "min_notional", "filters")


def symbol_sync(*, spec: SymbolSpec, actor: str) -> tuple[Symbol, bool]:
    """Create or update a symbol; record a filter snapshot whenever its filters change.

    Returns the symbol and whether anything changed. A change is audited.
    """
    now = timezone.now()
    with transaction.atomic():
        symbol = Symbol.objects.select_for_update().filter(exchange=spec.exchange, symbol=spec.symbol).first()
        values: Mapping[str, Any] = {
            "base": spec.base,
            "quote": spec.quote,
            **{name: getattr(spec, name) for name in _FILTER_FIELDS},
        }
        if symbol is None:
            symbol = Symbol.objects.create(
                exchange=spec.exchange, symbol=spec.symbol, updated_at=now, **values
            )
            action = "marketdata.symbol_added"
            changes = {name: [None, _as_json(value)] for name, value in values.items()}
        else:
            changes = {
                name: [_as_json(getattr(symbol, name)), _as_json(value)]
                for name, value in values.items()
                if getattr(symbol, name) != value
            }
            if not changes:
                return symbol, False
            for name, value in values.items():
                setattr(symbol, name, value)
            symbol.updated_at = now
            symbol.save()
            action = "marketdata.symbol_changed"
        SymbolFilterSnapshot.objects.create(
            symbol=symbol, valid_from=now, **{name: getattr(spec, name) for name in _FILTER_FIELDS}
        )
        audit_record(
            actor=actor,
            action=action,
            obj=symbol,
            payload={"exchange": spec.exchange, "symbol": spec.symbol, "changes": changes},
        )
    return symbol, True


def _as_json(value: Any) -> Any:
    """Decimals as their exact strings; everything else is JSON already."""
    return format(value, "f") if isinstance(value, Decimal) else value
