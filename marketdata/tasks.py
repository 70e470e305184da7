"""Celery tasks of market data: derived candles, the gap scan and gap backfills.

Tasks receive ids and times, never objects, and are safe to run twice: every write they make is
an idempotent upsert or a guarded state change. Tasks about one stream carry its symbol id and
timeframe first, and `route_by_stream` sends all of one stream's work to the same shard queue
(`marketdata.<n>`), so a stream's refreshes and backfills are not run side by side.
"""

from __future__ import annotations

import time
import zlib
from datetime import datetime
from typing import Any

from celery import shared_task
from django.conf import settings

from audit.alerting import alert_raise, alert_resolve
from audit.models import AlertSeverity
from marketdata.broadcasts import candles_broadcast
from marketdata.core.timeframes import Timeframe
from marketdata.events import candles_closed
from marketdata.gaps import gaps_due, gaps_scan
from marketdata.ingest.derived import closed_candle_event
from marketdata.models import Gap, Symbol
from marketdata.resampling import derived_candles_refresh
from marketdata.services import CandleWrite

_STREAM_TASKS = ("marketdata.resample_refresh",)  # gap backfills are given their queue when sent


def stream_queue(symbol_id: int, timeframe: str) -> str:
    shard = zlib.crc32(f"{symbol_id}:{timeframe}".encode()) % settings.OASIS_MARKETDATA_SHARDS
    return f"marketdata.{shard}"


def route_by_stream(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any) -> Any:
    """Celery router (CELERY_TASK_ROUTES): a stream's tasks go to that stream's shard queue."""
    if name not in _STREAM_TASKS:
        return None
    values = dict(kwargs or {})
    if "symbol_id" not in values and args:
        values["symbol_id"], values["timeframe"] = args[0], args[1]
    return {"queue": stream_queue(int(values["symbol_id"]), str(values["timeframe"]))}


@shared_task(name="marketdata.resample_refresh", acks_late=True, expires=3600)
def resample_refresh(symbol_id: int, timeframe: str, first_ms: int, last_ms: int) -> int:
    """Recompute the derived candles over source candles first_ms … last_ms of one stream, and
    announce them as closed (`marketdata.events`). Returns rows written."""
    derived: list[CandleWrite] = []
    written = derived_candles_refresh(
        symbol_id=symbol_id,
        timeframe=Timeframe.parse(timeframe),
        first_ms=first_ms,
        last_ms=last_ms,
        collect=derived,
    )
    if derived:
        name = Symbol.objects.values_list("symbol", flat=True).get(pk=symbol_id)
        now = time.time()
        events = [closed_candle_event(write, symbol=name, committed_at=now) for write in derived]
        candles_broadcast(events)
        candles_closed(events)
    return written


GAPS_ALERT_KEY = "marketdata.gaps_open"


@shared_task(name="marketdata.gaps_scan", acks_late=True, expires=300)
def gaps_scan_task(now: str | None = None) -> dict[str, int]:
    """Record the gaps of every ingested stream, then start a backfill for each one that is due.
    `now` (ISO 8601, default the current time) is the moment the scan judges from."""
    moment = None if now is None else datetime.fromisoformat(now)
    result = gaps_scan(now=moment)
    open_gaps = Gap.objects.filter(status__in=[Gap.Status.OPEN, Gap.Status.FAILED]).count()
    if open_gaps:
        alert_raise(
            key=GAPS_ALERT_KEY,
            severity=AlertSeverity.WARNING,
            title=f"{open_gaps} gap(s) of missing candles open",
            detail="being backfilled; a failed one is retried with backoff (operations page)",
            payload={"open": open_gaps},
            actor="system:gaps",
        )
    else:
        alert_resolve(key=GAPS_ALERT_KEY, actor="system:gaps")
    started = 0
    for gap in Gap.objects.filter(pk__in=gaps_due(now=moment)).only("symbol_id", "timeframe"):
        gap_backfill_start(gap)
        started += 1
    return {"streams": result.streams, "found": result.found, "recorded": result.recorded, "started": started}


@shared_task(name="marketdata.gap_backfill", acks_late=True, expires=3600)
def gap_backfill_task(gap_id: int) -> str:
    """Backfill (or impute) one recorded gap; returns its status afterwards."""
    from marketdata.backfill import gap_backfill  # the backfill pulls in ccxt: load it where used

    return str(gap_backfill(gap_id=gap_id).status)


def gap_backfill_start(gap: Gap) -> None:
    """Queue one gap's backfill on its stream's shard queue."""
    gap_backfill_task.apply_async(args=(gap.pk,), queue=stream_queue(gap.symbol_id, gap.timeframe))
