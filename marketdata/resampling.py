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
from datetime import UTC, datetime

from django.conf import settings

from marketdata.core.klines import Kline
from marketdata.core.resample import DEFAULT_DERIVATIONS, CandleArrays, ClosedCandle, Derivation, resample
from marketdata.core.timeframes import Timeframe
from marketdata.exchanges import PROFILES
from marketdata.models import Candle, Symbol
from marketdata.services import CandleWrite, candles_upsert_closed


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
    every derived candle computed, written or not (a consumer of closes may need them)."""
    written = 0
    pending = [(timeframe, first_ms, last_ms)]
    mapping = derivations(Symbol.objects.values_list("exchange", flat=True).get(pk=symbol_id))
    while pending:
        source, first, last = pending.pop(0)
        for source_of, target in mapping:
            if source_of != source:
                continue
            derived = _resampled(symbol_id, source, target, first, last)
            if not derived:
                continue
            written += candles_upsert_closed(writes=derived)
            if collect is not None:
                collect.extend(derived)
            pending.append((target, derived[0].kline.open_time_ms, derived[-1].kline.open_time_ms))
    return written


_SOURCE_FIELDS = (
    "open_time", "open", "high", "low", "close", "volume", "quote_volume", "trade_count", "imputed_inputs",
)  # fmt: skip


def _resampled(
    symbol_id: int, source: Timeframe, target: Timeframe, first_ms: int, last_ms: int
) -> list[CandleWrite]:
    start = target.bucket_start(first_ms)
    end = target.bucket_start(last_ms) + target.ms  # exclusive
    rows = (
        Candle.objects.filter(
            symbol_id=symbol_id,
            timeframe=source.value,
            open_time__gte=_utc(start),
            open_time__lt=_utc(end),
        )
        .order_by("open_time")
        .values_list(
            "open_time",
            "open",
            "high",
            "low",
            "close",
            "volume",
            "quote_volume",
            "trade_count",
            "imputed_inputs",
        )
    )
    candles = [
        ClosedCandle(
            timeframe=source,
            open_time_ms=int(opened.timestamp() * 1000),
            open=o,
            high=h,
            low=low,
            close=c,
            volume=v,
            quote_volume=q,
            trades=n,
            imputed_inputs=imputed,
        )
        for opened, o, h, low, c, v, q, n, imputed in rows
    ]
    if not candles:
        return []
    complete = resample(CandleArrays.from_candles(source, candles), target).to_candles()
    return [
        CandleWrite(
            symbol_id,
            Kline(
                symbol=str(symbol_id),
                timeframe=target,
                open_time_ms=candle.open_time_ms,
                open=candle.open,
                high=candle.high,
                low=candle.low,
                close=candle.close,
                volume=candle.volume,
                quote_volume=candle.quote_volume,
                trades=candle.trades,
                closed=True,
            ),
            Candle.Source.RESAMPLED,
            imputed=candle.imputed,
            imputed_inputs=candle.imputed_inputs,
        )
        for candle in complete
    ]


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
