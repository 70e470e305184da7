"""The batching writer of closed candles.

`threads` worker threads (each with its own database connection) share one queue. A worker
blocks for the first candle, then takes every candle already queued, so a burst of a thousand
closes becomes a few statements instead of a thousand; with two workers, the second burst-half
is written while the first commits, which the database's two cores can do side by side.
Writes are idempotent upserts, so the order in which workers commit does not matter.
Latency (exchange event time → committed) is observed after commit.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from django.db import InterfaceError, OperationalError, connections

from marketdata.ingest.metrics import CANDLES_WRITTEN, INGEST_LATENCY, WRITE_BATCH_SIZE
from marketdata.services import CandleWrite, candles_upsert_closed

logger = structlog.get_logger(__name__)

_STOP = object()


@dataclass(frozen=True)
class WriterStats:
    batches: int
    candles: int
    written: int


class CandleWriter:
    def __init__(
        self,
        *,
        threads: int = 2,
        max_batch: int = 5000,
        on_committed: Callable[[list[CandleWrite], float, float], None] | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self._queue: queue.SimpleQueue[CandleWrite | object] = queue.SimpleQueue()
        self._max_batch = max_batch
        self._on_committed = on_committed
        self._threads = [
            threading.Thread(target=self._run, name=f"candle-writer-{n}", daemon=True) for n in range(threads)
        ]
        self._lock = threading.Lock()
        self._batches = 0
        self._candles = 0
        self._written = 0
        self._error: BaseException | None = None

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, write: CandleWrite) -> None:
        if self._error is not None:
            raise RuntimeError("the candle writer has stopped") from self._error
        self._queue.put(write)

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything queued so far, then stop. Raises if a worker failed."""
        for _ in self._threads:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise RuntimeError(f"the candle writer did not drain within {timeout} s")
        if self._error is not None:
            raise RuntimeError("the candle writer failed") from self._error

    @property
    def stats(self) -> WriterStats:
        with self._lock:
            return WriterStats(self._batches, self._candles, self._written)

    def _run(self) -> None:
        try:
            stopping = False
            while not stopping and self._error is None:
                first = self._queue.get()
                if first is _STOP:
                    break
                batch: list[CandleWrite] = [first]  # type: ignore[list-item]
                while len(batch) < self._max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        # Finish this batch first; the other workers drain the rest.
                        stopping = True
                        break
                    batch.append(item)  # type: ignore[arg-type]
                self._write(batch)
        except BaseException as exc:
            self._error = exc
            logger.exception("candle_writer_failed")
        finally:
            connections.close_all()

    def _write(self, batch: list[CandleWrite]) -> None:
        # The connection is kept for the life of the worker (not closed per batch as in a
        # request cycle: reconnecting costs more than a whole batch); a broken one is replaced
        # by the retry below.
        started = time.perf_counter()
        written = self._write_with_retry(batch)
        committed = time.time()
        took = time.perf_counter() - started
        with self._lock:
            self._batches += 1
            self._candles += len(batch)
            self._written += written
        WRITE_BATCH_SIZE.observe(len(batch))
        for write in batch:
            event_ms = write.kline.event_time_ms
            if event_ms is not None:
                INGEST_LATENCY.labels(write.kline.timeframe.value).observe(
                    max(0.0, committed - event_ms / 1000)
                )
        CANDLES_WRITTEN.inc(written)
        if self._on_committed is not None:
            self._on_committed(batch, committed, took)

    def _write_with_retry(self, batch: list[CandleWrite]) -> int:
        # A lost connection (database restart, failover) must not lose candles: retry with
        # backoff until it works; the queue keeps filling meanwhile and nothing is dropped.
        delay = 0.1
        while True:
            try:
                return candles_upsert_closed(writes=batch)
            except (OperationalError, InterfaceError) as exc:
                # Anything else (a constraint refusing a candle) is a bug to surface, not retry.
                logger.warning("candle_write_retry", error=str(exc), delay_s=delay, batch=len(batch))
                connections.close_all()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
