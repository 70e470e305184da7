"""After each committed batch of the ingest process: derived candles, then close announcements.

The buckets a batch closed are recomputed (`marketdata.resampling`): with a broker configured
(REDIS_URL) as Celery tasks routed to each stream's shard queue, which announce the derived
closes themselves; without one (the embedded default) in one worker thread of this process, off
the event loop. Then every closed candle, ingested or derived here, is announced to the
registered listeners (`marketdata.events`: rules evaluate on it); dashboards get every closed
candle as soon as it is committed (`marketdata.broadcasts`). All of it runs after the
commit, reads what is stored and is safe to repeat. A failure is logged and left to the next
close (and to the gap scan): it never stops ingestion.

While the writer still has candles of a burst to commit, the committed batches are held (at
most `hold_max_s`) and handed over together once it is idle: the broadcasts are built on the
event loop and the derived candles and rule evaluations run in a thread that takes the
interpreter lock from the loop, and at a thousand symbols closing together either, done
between the burst's writes, made the last candles of the burst wait for the cores and the
lock (p95 46.9 against 25.2 ms at 1,000 symbols, two processes). The latency monitor still
records each candle at its commit.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import structlog
from django.conf import settings
from django.db import connections

from audit.monitors import ServiceLevelMonitor
from marketdata.broadcasts import candles_broadcast
from marketdata.events import ClosedCandle, candles_closed
from marketdata.ingest.writer import HeldWhileBusy, IdleNotifier
from marketdata.resampling import RefreshRequest, derived_candles_refresh, refresh_requests
from marketdata.services import CandleWrite

logger = structlog.get_logger(__name__)


def closed_candle_event(write: CandleWrite, *, symbol: str, committed_at: float) -> ClosedCandle:
    k = write.kline
    # Decimal → float here, at the edge of the numeric code (indicators work on floats).
    return ClosedCandle(
        symbol_id=write.symbol_id,
        symbol=symbol,
        timeframe=k.timeframe,
        open_time_ms=k.open_time_ms,
        open=float(k.open),
        high=float(k.high),
        low=float(k.low),
        close=float(k.close),
        volume=float(k.volume),
        imputed=write.imputed_count > 0,
        committed_at=committed_at,
    )


class DerivedRefresher:
    def __init__(
        self,
        *,
        latency_monitor: ServiceLevelMonitor | None = None,
        post_close_monitor: ServiceLevelMonitor | None = None,
        hold_max_s: float = 0.25,
    ) -> None:
        self._use_celery = not settings.CELERY_TASK_ALWAYS_EAGER
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="derived-candles")
        # WS → persisted per timeframe (the exchange's event time to our commit), for the
        # service-level alert; checked from the worker thread, never on the event loop.
        self._monitor = latency_monitor
        # Close → calculated per timeframe: from the exchange's close event of the candle (for a
        # derived one, of the 1m candle that completed its bucket) to its derived candles
        # written and its rules evaluated and their signals stored (the listeners returned).
        self._post_close = post_close_monitor
        self._writer: IdleNotifier | None = None
        # Committed batches held while the writer has more of the burst: (batch, committed at).
        self._held: HeldWhileBusy[tuple[list[CandleWrite], float]] = HeldWhileBusy(
            self._hand_over, max_s=hold_max_s
        )

    def hold_while_busy(self, writer: IdleNotifier) -> None:
        """Hold committed batches while `writer` has more of the burst to commit (see the
        module's docstring)."""
        self._writer = writer

    def after_commit(self, batch: list[CandleWrite], committed_at: float, took: float) -> None:
        """`CandleWriter` on_committed hook (runs on the event loop: only hands work over).
        Dashboards hear of the batch's candles once the burst is committed (a non-blocking
        send), not after the derived candles and the previous batch's rule evaluations, which
        queue in the thread."""
        if self._monitor is not None:
            for write in batch:
                event_ms = write.kline.event_time_ms
                if event_ms is not None:
                    self._monitor.add(
                        write.kline.timeframe.value, committed_at * 1000 - event_ms, at=committed_at
                    )
        writer = self._writer
        if writer is not None and writer.busy:
            self._held.hold((batch, committed_at), writer)
            return
        self._held.release()  # what was committed before this batch goes first
        self._hand_over([(batch, committed_at)])

    def _hand_over(self, committed: list[tuple[list[CandleWrite], float]]) -> None:
        """Broadcast the batches' candles and queue their derived candles and rules, oldest first."""
        for batch, committed_at in committed:
            names = {write.symbol_id: write.kline.symbol for write in batch}
            events = [
                closed_candle_event(w, symbol=names[w.symbol_id], committed_at=committed_at) for w in batch
            ]
            candles_broadcast(events)
            self._executor.submit(self._after_commit, batch, events)

    def close(self) -> None:
        """Hand over what is held, finish it, then release this thread's database connection."""
        self._held.release()
        self._executor.submit(connections.close_all)
        self._executor.shutdown(wait=True)

    def _after_commit(self, batch: list[CandleWrite], events: list[ClosedCandle]) -> None:
        names = {write.symbol_id: write.kline.symbol for write in batch}
        derived: list[CandleWrite] = []
        for request in refresh_requests(batch):
            self._refresh(request, derived)
        derived_at = time.time()
        derived_events = [
            closed_candle_event(w, symbol=names[w.symbol_id], committed_at=derived_at) for w in derived
        ]
        candles_broadcast(derived_events)
        candles_closed(events + derived_events)
        if self._post_close is not None:
            self._post_close_observe(batch, derived)
        if self._monitor is not None:
            self._monitor.maybe_check()

    def _post_close_observe(self, batch: list[CandleWrite], derived: list[CandleWrite]) -> None:
        assert self._post_close is not None
        done_ms = time.time() * 1000
        closed_ms: dict[int, int] = {}
        for write in batch:
            event_ms = write.kline.event_time_ms
            if event_ms is None:
                continue  # backfilled over REST: no close event to measure from
            closed_ms[write.symbol_id] = max(closed_ms.get(write.symbol_id, 0), event_ms)
            self._post_close.add(write.kline.timeframe.value, done_ms - event_ms)
        for write in derived:
            if write.symbol_id in closed_ms:
                self._post_close.add(write.kline.timeframe.value, done_ms - closed_ms[write.symbol_id])
        self._post_close.maybe_check()

    def _refresh(self, request: RefreshRequest, derived: list[CandleWrite]) -> None:
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
                    collect=derived,
                )
        except Exception:  # a refresh is repeatable: the next close or the gap scan redoes it
            logger.exception(
                "derived_refresh_failed", symbol_id=request.symbol_id, timeframe=request.timeframe.value
            )
