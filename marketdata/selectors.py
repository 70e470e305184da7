"""Reads of market data."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from django.db.models import Max

from marketdata.core.timeframes import Timeframe
from marketdata.models import Candle, Symbol


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
