"""Derived candles from the ingest process: after each committed batch, the buckets it closed.

With a broker configured (REDIS_URL) each stream's refresh is a Celery task routed to the
stream's shard queue; without one (the embedded default) it runs in one worker thread of this
process, off the event loop. Either way it runs after the commit, reads what is stored and is
safe to repeat. A failed refresh is logged and left to the next one (and to the gap scan):
it never stops ingestion.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import structlog
from django.conf import settings
from django.db import connections

from marketdata.resampling import RefreshRequest, derived_candles_refresh, refresh_requests
from marketdata.services import CandleWrite

logger = structlog.get_logger(__name__)


class DerivedRefresher:
    def __init__(self) -> None:
        self._use_celery = not settings.CELERY_TASK_ALWAYS_EAGER
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="derived-candles")

    def after_commit(self, batch: list[CandleWrite], committed_at: float, took: float) -> None:
        """`CandleWriter` on_committed hook (runs on the event loop: only hands work over)."""
        requests = refresh_requests(batch)
        if requests:
            self._executor.submit(self._refresh, requests)

    def close(self) -> None:
        """Finish what was handed over, then release this thread's database connection."""
        self._executor.submit(connections.close_all)
        self._executor.shutdown(wait=True)

    def _refresh(self, requests: list[RefreshRequest]) -> None:
        for request in requests:
            try:
                if self._use_celery:
                    from marketdata.tasks import resample_refresh

                    resample_refresh.apply_async(
                        args=(request.symbol_id, request.timeframe.value, request.first_ms, request.last_ms)
                    )
                else:
                    derived_candles_refresh(
                        symbol_id=request.symbol_id,
                        timeframe=request.timeframe,
                        first_ms=request.first_ms,
                        last_ms=request.last_ms,
                    )
            except Exception:  # a refresh is repeatable: the next close or the gap scan redoes it
                logger.exception(
                    "derived_refresh_failed", symbol_id=request.symbol_id, timeframe=request.timeframe.value
                )
