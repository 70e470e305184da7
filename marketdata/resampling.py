"""Derived candles (3m, 10m, 4h, …) kept in step with the candles they come from.

The arithmetic is `marketdata.core.resample` (pure, one implementation for live, backfill and
backtest); this module reads the source candles of the buckets a change touched, resamples
them and upserts the result with source=resampled. A bucket is written only when every one of
its source candles is stored (real or imputed), so a derived candle never comes from partial
data; recomputing it after a backfill replaces the stored one when it has fewer imputed
inputs. Running the same refresh twice writes the same rows (Celery may deliver a task twice).

Who calls it: the ingest process after each committed batch (`refresh_requests` says which
streams completed a derived bucket), in process for the embedded default and as Celery tasks
(`marketdata.tasks.resample_refresh`, routed by stream) when Redis is configured; and the
backfill after it wrote a range.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection

from marketdata.core.resample import DEFAULT_DERIVATIONS, CandleArrays, Derivation, FixedPointColumn, resample
from marketdata.core.timeframes import Timeframe, utc_from_ms
from marketdata.exchanges import PROFILES
from marketdata.models import Candle, Symbol
from marketdata.services import CandleRows, CandleWrite, candles_upsert_rows


@dataclass(frozen=True)
class RefreshRequest:
    """Source candles of one stream that changed: open times first_ms … last_ms inclusive."""

    symbol_id: int
    timeframe: Timeframe
    first_ms: int
    last_ms: int


# Derived only for exchanges that do not serve them: where the exchange streams them, its own
# candles are ingested (and backfilled) instead.
_FOR_EXCHANGES_LACKING = {
    (Timeframe.M1, Timeframe.M5),
    (Timeframe.M1, Timeframe.M15),
    (Timeframe.M1, Timeframe.H1),
}


def derivations(exchange: str | None = None) -> tuple[Derivation, ...]:
    """The derivation map in force: the `OASIS_DERIVATIONS` setting when set; otherwise the
    default map less the pairs whose target `exchange` serves itself (all of the default map
    when no exchange is named)."""
    if settings.OASIS_DERIVATIONS is not None:
        return tuple(settings.OASIS_DERIVATIONS)
    if exchange is None or exchange not in PROFILES:
        return DEFAULT_DERIVATIONS
    streamed = PROFILES[exchange].streamed_timeframes
    return tuple(
        pair for pair in DEFAULT_DERIVATIONS if not (pair in _FOR_EXCHANGES_LACKING and pair[1] in streamed)
    )


def refresh_requests(
    writes: Iterable[CandleWrite], *, derivation_map: Sequence[Derivation] | None = None
) -> list[RefreshRequest]:  # without a map: every pair any exchange may derive
    """Which streams of a committed batch need derived candles recomputed, and over what range.

    A live close matters only when it is the last candle of a derived bucket (the bucket has
    just closed); candles from anywhere else (backfill, imputation) may complete or correct any
    bucket they fall in, so their whole range is refreshed.
    """
    by_source: dict[Timeframe, list[Timeframe]] = {}
    for source, target in derivation_map if derivation_map is not None else derivations():
        by_source.setdefault(source, []).append(target)
    spans: dict[tuple[int, Timeframe], tuple[int, int]] = {}
    for write in writes:
        timeframe = write.kline.timeframe
        targets = by_source.get(timeframe)
        if not targets:
            continue
        opened = write.kline.open_time_ms
        if write.source == "ws" and not any((opened + timeframe.ms) % target.ms == 0 for target in targets):
            continue
        key = (write.symbol_id, timeframe)
        first, last = spans.get(key, (opened, opened))
        spans[key] = (min(first, opened), max(last, opened))
    return [RefreshRequest(symbol_id, tf, first, last) for (symbol_id, tf), (first, last) in spans.items()]


def derived_candles_refresh(
    *,
    symbol_id: int,
    timeframe: Timeframe,
    first_ms: int,
    last_ms: int,
    collect: list[CandleWrite] | None = None,
) -> int:
    """Recompute and upsert every derived bucket that covers source candles first_ms … last_ms of
    (symbol, timeframe), and whatever is derived from those in turn. Returns rows written (a
    bucket already stored as computed is not written again); `collect`, when given, receives
    every derived candle computed, written or not (a consumer of closes may need them).

    Source candles are read as text (numeric as PostgreSQL prints it) straight into fixed-point
    columns, and derived candles written back as text in bulk, so a year costs seconds, not
    minutes. A derived timeframe that feeds another (1m→5m→10m, 1m→1h→4h) is not read back when
    what was just written is exactly what is stored: every computed candle was written (new, or
    replacing one with more imputed inputs) and they have no gap between them. Only the buckets
    at either end, which may hold candles stored before, are read.
    """
    written = 0
    pending: list[tuple[Timeframe, int, int, _SourceRows | None]] = [(timeframe, first_ms, last_ms, None)]
    mapping = derivations(Symbol.objects.values_list("exchange", flat=True).get(pk=symbol_id))
    while pending:
        source, first, last, known = pending.pop(0)
        targets = [target for source_of, target in mapping if source_of == source]
        if not targets:
            continue
        # One read and one conversion of the source candles for all its targets: a column's
        # digits, and so the derived ones, do not depend on what else is in it (decision 0013).
        start = min(target.bucket_start(first) for target in targets)
        end = max(target.bucket_start(last) + target.ms for target in targets)  # exclusive
        arrays = _arrays(source, _source_rows(symbol_id, source, start, end, known))
        for target in targets:
            window = slice(
                int(np.searchsorted(arrays.open_time_ms, target.bucket_start(first))),
                int(np.searchsorted(arrays.open_time_ms, target.bucket_start(last) + target.ms)),
            )
            derived = _resampled(symbol_id, target, arrays.take(window))
            if not len(derived):
                continue
            count = candles_upsert_rows(rows=derived)
            written += count
            if collect is not None:
                collect.extend(derived.writes())
            times = derived.open_time_ms
            gapless = times[-1] - times[0] == (len(times) - 1) * target.ms
            stored = _SourceRows.of(derived) if count == len(derived) and gapless else None
            pending.append((target, times[0], times[-1], stored))
    return written


@dataclass(frozen=True)
class _SourceRows:
    """Candles of one stream in time order, as read from the table: decimal columns as text."""

    open_time_ms: list[int]
    open: list[str]
    high: list[str]
    low: list[str]
    close: list[str]
    volume: list[str]
    quote_volume: list[str]
    trades: list[int]
    imputed_inputs: list[int]

    @classmethod
    def of(cls, rows: CandleRows) -> _SourceRows:
        return cls(
            list(rows.open_time_ms), list(rows.open), list(rows.high), list(rows.low), list(rows.close),
            list(rows.volume), list(rows.quote_volume), list(rows.trades),
            list(rows.imputed_inputs) if rows.imputed_inputs is not None else [0] * len(rows),
        )  # fmt: skip

    def __add__(self, other: _SourceRows) -> _SourceRows:
        return _SourceRows(
            *(mine + theirs for mine, theirs in zip(self.columns(), other.columns(), strict=True))
        )

    def columns(self) -> tuple[list[Any], ...]:
        return (
            self.open_time_ms, self.open, self.high, self.low, self.close, self.volume, self.quote_volume,
            self.trades, self.imputed_inputs,
        )  # fmt: skip


def _source_rows(
    symbol_id: int, source: Timeframe, start: int, end: int, known: _SourceRows | None
) -> _SourceRows:
    """Stored `source` candles opening in [start, end): `known` where it holds them (it is what
    is stored over its own span, without gaps), the table for the rest."""
    if known is None or not known.open_time_ms:
        return _read_rows(symbol_id, source, start, end)
    before = _read_rows(symbol_id, source, start, min(end, known.open_time_ms[0]))
    after = _read_rows(symbol_id, source, max(start, known.open_time_ms[-1] + source.ms), end)
    inside = [index for index, opened in enumerate(known.open_time_ms) if start <= opened < end]
    if len(inside) != len(known.open_time_ms):
        window = slice(inside[0], inside[-1] + 1) if inside else slice(0, 0)
        known = _SourceRows(*(column[window] for column in known.columns()))
    return before + known + after


_READ_TEXT = (
    "SELECT (extract(epoch FROM open_time) * 1000)::int8, open::text, high::text, low::text, close::text, "
    "volume::text, quote_volume::text, trade_count, imputed_inputs FROM marketdata_candle "
    "WHERE symbol_id = %s AND timeframe = %s AND open_time >= %s AND open_time < %s ORDER BY open_time"
)
# Long ranges come back as one text value, the rows' fields joined by spaces (numbers only, so
# nothing else holds one), split in C. Row by row (a query's rows, or COPY TO STDOUT, which
# psycopg hands back one row per call) a year took several seconds more.
_READ_JOINED = (
    "SELECT count(*), string_agg(concat_ws(' ', (extract(epoch FROM open_time) * 1000)::int8, open, high, "
    "low, close, volume, quote_volume, trade_count, imputed_inputs), ' ' ORDER BY open_time) "
    "FROM marketdata_candle WHERE symbol_id = %s AND timeframe = %s AND open_time >= %s AND open_time < %s"
)
_QUERY_MAX_ROWS = 2000  # up to this many candles, a plain query


def _read_rows(symbol_id: int, source: Timeframe, start: int, end: int) -> _SourceRows:
    if end <= start:
        return _SourceRows([], [], [], [], [], [], [], [], [])
    if connection.vendor != "postgresql":
        return _read_rows_orm(symbol_id, source, start, end)
    params = [symbol_id, source.value, utc_from_ms(start), utc_from_ms(end)]
    with connection.cursor() as cursor:
        if (end - start) // source.ms <= _QUERY_MAX_ROWS:
            cursor.execute(_READ_TEXT, params)
            rows = cursor.fetchall()
            if not rows:
                return _SourceRows([], [], [], [], [], [], [], [], [])
            t, o, h, low, c, v, q, n, imputed = (list(column) for column in zip(*rows, strict=True))
            return _SourceRows(t, o, h, low, c, v, q, n, imputed)
        cursor.execute(_READ_JOINED, params)
        count, joined = cursor.fetchone()
    fields = joined.split(" ") if count else []
    if len(fields) != 9 * count:
        raise RuntimeError(f"read {len(fields)} fields for {count} candles")  # cannot happen: numbers only
    return _SourceRows(
        list(map(int, fields[0::9])), fields[1::9], fields[2::9], fields[3::9], fields[4::9], fields[5::9],
        fields[6::9], list(map(int, fields[7::9])), list(map(int, fields[8::9])),
    )  # fmt: skip


def _read_rows_orm(symbol_id: int, source: Timeframe, start: int, end: int) -> _SourceRows:
    """Elsewhere (SQLite) the values come back as Decimals of the stored fixed-point text."""
    rows = (
        Candle.objects.filter(
            symbol_id=symbol_id,
            timeframe=source.value,
            open_time__gte=utc_from_ms(start),
            open_time__lt=utc_from_ms(end),
        )
        .order_by("open_time")
        .values_list(*_SOURCE_FIELDS)
    )
    columns: _SourceRows = _SourceRows([], [], [], [], [], [], [], [], [])
    for opened, *decimals, trades, imputed in rows:
        columns.open_time_ms.append(int(opened.timestamp() * 1000))
        for column, value in zip(columns.columns()[1:7], decimals, strict=True):
            column.append(format(value, "f"))
        columns.trades.append(trades)
        columns.imputed_inputs.append(imputed)
    return columns


_SOURCE_FIELDS = (
    "open_time", "open", "high", "low", "close", "volume", "quote_volume", "trade_count", "imputed_inputs",
)  # fmt: skip


def _arrays(source: Timeframe, rows: _SourceRows) -> CandleArrays:
    return CandleArrays(
        timeframe=source,
        open_time_ms=np.array(rows.open_time_ms, dtype=np.int64),
        open=FixedPointColumn.from_strings(rows.open),
        high=FixedPointColumn.from_strings(rows.high),
        low=FixedPointColumn.from_strings(rows.low),
        close=FixedPointColumn.from_strings(rows.close),
        volume=FixedPointColumn.from_strings(rows.volume),
        quote_volume=FixedPointColumn.from_strings(rows.quote_volume),
        trades=np.array(rows.trades, dtype=np.int64),
        imputed_inputs=np.array(rows.imputed_inputs, dtype=np.int64),
    )


def _resampled(symbol_id: int, target: Timeframe, source: CandleArrays) -> CandleRows:
    """The complete `target` buckets of `source`, by the one aggregation (`resample`)."""
    derived = resample(source, target)
    return CandleRows(
        symbol_id, target, Candle.Source.RESAMPLED.value, derived.open_time_ms.tolist(),
        derived.open.strings(), derived.high.strings(), derived.low.strings(), derived.close.strings(),
        derived.volume.strings(), derived.quote_volume.strings(), derived.trades.tolist(),
        derived.imputed_inputs.tolist(),
    )  # fmt: skip
