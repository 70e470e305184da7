"""The gap scan: missing closed candles of every ingested stream, recorded as `Gap` rows.

Streams are the (symbol, timeframe) pairs that have candles from the exchange (ws, rest or
imputed; derived timeframes are recomputed, not backfilled). Each scan looks back `lookback`
from the newest bucket that should be closed and stored by now (`grace` allows for the writer),
never before a stream's first stored candle. A missing range already recorded and not yet
resolved is not recorded twice. The backfill (`marketdata.backfill.gap_backfill`) closes gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Min
from django.utils import timezone

from marketdata.core.timeframes import Timeframe, ms_from_datetime, utc_from_ms
from marketdata.ingest.metrics import GAPS_OPEN
from marketdata.models import Candle, Gap
from marketdata.selectors import candle_gaps

_EXCHANGE_SOURCES = (Candle.Source.WS, Candle.Source.REST, Candle.Source.IMPUTED)
_UNRESOLVED = (Gap.Status.OPEN, Gap.Status.FAILED)


@dataclass(frozen=True)
class ScanResult:
    streams: int
    found: int
    recorded: int


def gaps_scan(
    *,
    now: datetime | None = None,
    lookback: timedelta = timedelta(days=2),
    grace: timedelta = timedelta(seconds=30),
) -> ScanResult:
    """Record every missing range of every ingested stream within the lookback window."""
    moment = now or timezone.now()
    streams = (
        Candle.objects.filter(source__in=_EXCHANGE_SOURCES)
        .values("symbol_id", "timeframe")
        .annotate(first=Min("open_time"))
        .order_by("symbol_id", "timeframe")
    )
    found = recorded = 0
    count = 0
    for stream in streams:
        count += 1
        timeframe = Timeframe(stream["timeframe"])
        until_ms = timeframe.bucket_start(ms_from_datetime(moment - grace)) - timeframe.ms
        since_ms = max(
            ms_from_datetime(stream["first"]), timeframe.bucket_start(ms_from_datetime(moment - lookback))
        )
        if until_ms < since_ms:
            continue
        for first_ms, last_ms in candle_gaps(
            symbol_id=stream["symbol_id"], timeframe=timeframe, since_ms=since_ms, until_ms=until_ms
        ):
            found += 1
            if _record(stream["symbol_id"], timeframe, first_ms, last_ms, moment):
                recorded += 1
    GAPS_OPEN.set(Gap.objects.filter(status__in=_UNRESOLVED).count())
    return ScanResult(streams=count, found=found, recorded=recorded)


def _record(symbol_id: int, timeframe: Timeframe, first_ms: int, last_ms: int, moment: datetime) -> bool:
    start, end = utc_from_ms(first_ms), utc_from_ms(last_ms)
    overlapping = Gap.objects.filter(
        symbol_id=symbol_id, timeframe=timeframe.value, status__in=_UNRESOLVED, start__lte=end, end__gte=start
    )
    if overlapping.exists():
        return False  # already known; its backfill covers it (a grown gap is found again once resolved)
    try:
        with transaction.atomic():
            Gap.objects.create(
                symbol_id=symbol_id, timeframe=timeframe.value, start=start, end=end, detected_at=moment
            )
    except IntegrityError:
        return False  # recorded by a concurrent scan, or an identical range resolved before
    return True


def gaps_due(*, now: datetime | None = None, limit: int = 500) -> list[int]:
    """Ids of unresolved gaps whose next attempt is due, oldest first."""
    moment = now or timezone.now()
    due = Gap.objects.filter(status=Gap.Status.OPEN) | Gap.objects.filter(
        status=Gap.Status.FAILED, next_attempt_at__lte=moment
    )
    return list(due.order_by("detected_at", "id").values_list("id", flat=True)[:limit])
