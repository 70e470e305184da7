"""Reads of market data."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import F, Max, QuerySet, TextField, Window
from django.db.models.functions import Cast, Lag

from marketdata.core.klines import Kline
from marketdata.core.timeframes import Timeframe, ms_from_datetime, utc_from_ms
from marketdata.models import Candle, Gap, Symbol


def symbol_ids_by_name(*, exchange: str, names: Iterable[str] | None = None) -> dict[str, int]:
    """{symbol: id} for `exchange`: the named symbols, or every TRADING one when names is None."""
    rows = Symbol.objects.filter(exchange=exchange)
    selected = (
        rows.filter(status=Symbol.Status.TRADING) if names is None else rows.filter(symbol__in=list(names))
    )
    return dict(selected.values_list("symbol", "id"))


def candle_resume_points(
    *, symbol_ids: dict[str, int], timeframes: Sequence[Timeframe]
) -> dict[tuple[str, Timeframe], int]:
    """Open time (ms) of the newest stored candle of each (symbol, timeframe) that has one."""
    names = {symbol_id: name for name, symbol_id in symbol_ids.items()}
    rows = (
        Candle.objects.filter(symbol_id__in=list(names), timeframe__in=[tf.value for tf in timeframes])
        .values("symbol_id", "timeframe")
        .annotate(newest=Max("open_time"))
    )
    return {
        (names[row["symbol_id"]], Timeframe(row["timeframe"])): int(row["newest"].timestamp() * 1000)
        for row in rows
    }


def candle_recent_holes(
    *, symbol_ids: dict[str, int], timeframes: Sequence[Timeframe], window_ms: int, now_ms: int
) -> dict[tuple[str, Timeframe], list[tuple[int, int]]]:
    """Holes between stored candles of each (symbol, timeframe) within the last `window_ms`
    before `now_ms`: ranges of missing open times (first, last), inclusive, oldest first.

    A restarted ingest resumes every stream after its newest stored candle; a hole behind it
    (a backfill cut short by a kill, while newer live candles were written) is found here, one
    statement per timeframe (each stored candle against the one before it).
    """
    names = {symbol_id: name for name, symbol_id in symbol_ids.items()}
    holes: dict[tuple[str, Timeframe], list[tuple[int, int]]] = {}
    for timeframe in timeframes:
        step = timeframe.ms
        since = utc_from_ms(timeframe.bucket_start(now_ms - window_ms))
        rows = (
            Candle.objects.filter(symbol_id__in=list(names), timeframe=timeframe.value, open_time__gte=since)
            .annotate(
                prev=Window(Lag("open_time"), partition_by=[F("symbol_id")], order_by=F("open_time").asc())
            )
            .filter(open_time__gt=F("prev") + timedelta(milliseconds=step))
            .order_by("symbol_id", "open_time")
            .values_list("symbol_id", "prev", "open_time")
        )
        for symbol_id, prev, open_time in rows:
            first, last = ms_from_datetime(prev) + step, ms_from_datetime(open_time) - step
            holes.setdefault((names[symbol_id], timeframe), []).append((first, last))
    return holes


_GAPS_SQL = """
WITH edges AS (
    SELECT t, lag(t) OVER (ORDER BY t) AS prev FROM (
        SELECT (extract(epoch FROM open_time) * 1000)::bigint AS t FROM marketdata_candle
        WHERE symbol_id = %(symbol_id)s AND timeframe = %(timeframe)s
            AND open_time >= %(since)s AND open_time <= %(until)s
        UNION ALL SELECT %(before)s
        UNION ALL SELECT %(after)s
    ) AS stored
)
SELECT prev + %(step)s, t - %(step)s FROM edges WHERE t - prev > %(step)s ORDER BY prev
"""


def candle_gaps(
    *, symbol_id: int, timeframe: Timeframe, since_ms: int, until_ms: int
) -> list[tuple[int, int]]:
    """Missing closed candles of one stream between two open times (both included, both on
    `timeframe` boundaries): ranges of open times (first, last), inclusive, in time order.

    On PostgreSQL one statement over the candle table (each stored open time against the one
    before it, with sentinels just outside the range); elsewhere the same walk in Python.
    """
    step = timeframe.ms
    if not (timeframe.is_aligned(since_ms) and timeframe.is_aligned(until_ms)):
        raise ValueError(f"gap scan bounds {since_ms}…{until_ms} are not on {timeframe} boundaries")
    if until_ms < since_ms:
        return []
    since, until = utc_from_ms(since_ms), utc_from_ms(until_ms)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                _GAPS_SQL,
                {
                    "symbol_id": symbol_id,
                    "timeframe": timeframe.value,
                    "since": since,
                    "until": until,
                    "before": since_ms - step,
                    "after": until_ms + step,
                    "step": step,
                },
            )
            return [(int(first), int(last)) for first, last in cursor.fetchall()]
    stored = Candle.objects.filter(
        symbol_id=symbol_id, timeframe=timeframe.value, open_time__gte=since, open_time__lte=until
    ).values_list("open_time", flat=True)
    times = sorted(int(moment.timestamp() * 1000) for moment in stored)
    gaps = []
    previous = since_ms - step
    for current in [*times, until_ms + step]:
        if current - previous > step:
            gaps.append((previous + step, current - step))
        previous = current
    return gaps


def candle_as_kline(candle: Candle, *, symbol: str) -> Kline:
    """A stored candle as the exchange sent it (a replay hands it to the close listeners as
    ingestion would)."""
    return Kline(
        symbol=symbol,
        timeframe=Timeframe(candle.timeframe),
        open_time_ms=ms_from_datetime(candle.open_time),
        open=candle.open,
        high=candle.high,
        low=candle.low,
        close=candle.close,
        volume=candle.volume,
        quote_volume=candle.quote_volume,
        trades=candle.trade_count,
        closed=candle.is_closed,
    )


def symbols_list(*, exchange: str | None = None, status: str | None = None) -> QuerySet[Symbol]:
    """Symbols, optionally of one exchange and one status (unordered: the caller pages them)."""
    rows = Symbol.objects.all()
    if exchange:
        rows = rows.filter(exchange=exchange)
    if status:
        rows = rows.filter(status=status)
    return rows


def symbol_find(*, exchange: str, name: str) -> Symbol | None:
    """The symbol `name` (as the exchange spells it, any case) of `exchange`, or None."""
    return Symbol.objects.filter(exchange=exchange, symbol=name.upper()).first()


CANDLE_COLUMNS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "trade_count",
    "is_imputed",
    "source",
)


def candles_in_range(
    *, symbol_id: int, timeframe: Timeframe, start: datetime | None = None, end: datetime | None = None
) -> QuerySet[Candle]:
    """Closed candles of one stream with open time in [start, end] (either bound optional),
    unordered: the caller orders and pages them by open time (the unique index's last column)."""
    rows = Candle.objects.filter(symbol_id=symbol_id, timeframe=timeframe.value, is_closed=True)
    if start is not None:
        rows = rows.filter(open_time__gte=start)
    if end is not None:
        rows = rows.filter(open_time__lte=end)
    return rows


_PRICE_COLUMNS = ("open", "high", "low", "close", "volume", "quote_volume")


def candle_rows_as_text(
    *, symbol_id: int, timeframe: Timeframe, start: datetime | None = None, end: datetime | None = None
) -> QuerySet[Candle, Any]:
    """`candles_in_range` as dicts of open_time, trade_count, is_imputed, source and, for each
    price and volume, `<name>_text`: its stored text (PostgreSQL's numeric text keeps every digit
    and the scale; SQLite stores the text), exactly what the API sends, without making a Decimal
    of each value only to print it again."""
    return candles_in_range(symbol_id=symbol_id, timeframe=timeframe, start=start, end=end).values(
        "open_time",
        "trade_count",
        "is_imputed",
        "source",
        **{f"{name}_text": Cast(name, output_field=TextField()) for name in _PRICE_COLUMNS},
    )


def gaps_list(
    *, symbol_id: int | None = None, timeframe: str | None = None, status: str | None = None
) -> QuerySet[Gap]:
    """Recorded gaps, optionally of one symbol, timeframe and status, with their symbols."""
    rows = Gap.objects.select_related("symbol")
    if symbol_id is not None:
        rows = rows.filter(symbol_id=symbol_id)
    if timeframe:
        rows = rows.filter(timeframe=timeframe)
    if status:
        rows = rows.filter(status=status)
    return rows
