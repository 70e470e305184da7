"""The batching writer of closed candles, on the ingest process's event loop.

The streams hand closed candles to `submit`; `connections` writer tasks, each with its own
database connection, take everything queued at once and upsert it in one statement, so a
burst of a thousand closes becomes a few statements, written while the rest of the burst is
still being read. Writes are idempotent upserts, so the order in which writers commit does
not matter. Latency (exchange event time → committed) is observed after commit.

Why tasks on the loop and not threads: a burst is CPU-bound on both sides (parsing frames,
building statements). Writer threads contended with the reading loop for the interpreter lock,
each handing it over only every 5 ms (the switch interval): bursts were read in stalls and
written in 30-50 ms batches. On the loop, the Python side of a write runs between two reads
of the socket and the database does its part on its own cores while reading goes on.

On PostgreSQL the writers use psycopg's asyncio connections. On any other database (the
embedded SQLite default) one writer runs the synchronous service in one worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import psycopg
import structlog
from django.db import InterfaceError, OperationalError, connection, connections

from marketdata.core.timeframes import Timeframe
from marketdata.ingest.column_arrays import ColumnArrayDumper
from marketdata.ingest.metrics import CANDLES_WRITTEN, INGEST_LATENCY, WRITE_BATCH_SIZE
from marketdata.services import CandleWrite, candles_upsert_closed, candles_upsert_closed_async

logger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class WriterStats:
    batches: int
    candles: int
    written: int


class _Backend(Protocol):
    async def write(self, batch: list[CandleWrite]) -> int: ...
    async def close(self) -> None: ...


class _PostgresBackend:
    """One asyncio connection in autocommit mode: one statement per batch, one round trip."""

    def __init__(self, params: dict[str, Any]) -> None:
        self._params = params
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def write(self, batch: list[CandleWrite]) -> int:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(**self._params, autocommit=True)
            self._conn.adapters.register_dumper(list, ColumnArrayDumper)
        try:
            return await candles_upsert_closed_async(conn=self._conn, writes=batch)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            await self.close()  # reconnect on the next attempt
            raise

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


class _ThreadBackend:
    """Any other database: the synchronous service, in one thread that keeps its connection."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="candle-writer")

    async def write(self, batch: list[CandleWrite]) -> int:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, functools.partial(candles_upsert_closed, writes=batch)
            )
        except (OperationalError, InterfaceError):
            await loop.run_in_executor(self._executor, connections.close_all)
            raise

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, connections.close_all)
        self._executor.shutdown(wait=True)


class IdleNotifier(Protocol):
    """What `HeldWhileBusy` needs of a writer (`CandleWriter`, or a test's stand-in)."""

    @property
    def busy(self) -> bool: ...

    def when_idle(self, callback: Callable[[], None]) -> None: ...


_T = TypeVar("_T")


class HeldWhileBusy(Generic[_T]):
    """Work held back while a writer commits a burst, so that it does not take the cores and
    the interpreter lock from the burst's last writes: handed to `release` (oldest first, all
    at once) when the writer has been idle for its settle time, or `max_s` after the first item
    held since the last release, whichever comes first. Call on the event loop."""

    def __init__(self, release: Callable[[list[_T]], None], *, max_s: float) -> None:
        self._release = release
        self._max_s = max_s
        self._items: list[_T] = []
        self._idle_awaited = False  # one idle call asked of the writer at a time
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._items)

    def hold(self, item: _T, writer: IdleNotifier) -> None:
        self._items.append(item)
        if not self._idle_awaited:
            self._idle_awaited = True
            writer.when_idle(self._writer_idle)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._max_s, self.release)

    def release(self) -> None:
        """Hand over everything held now (nothing to do, and cheap, when nothing is held)."""
        if not self._items:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._items = self._items, []
        self._release(items)

    def _writer_idle(self) -> None:
        self._idle_awaited = False
        self.release()


_RETRYABLE = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)


class CandleWriter:
    def __init__(
        self,
        *,
        connections: int = 2,
        max_batch: int = 2000,
        idle_settle_s: float = 0.005,
        on_committed: Callable[[list[CandleWrite], float, float], None] | None = None,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self._postgres = connection.vendor == "postgresql"
        # Django's connection settings, read here (synchronous code) for the asyncio connections.
        self._params: dict[str, Any] = {}
        if self._postgres:
            self._params = {
                key: value
                for key, value in connection.get_connection_params().items()
                if key not in ("cursor_factory", "context", "prepare_threshold")
            }
            self._params["application_name"] = "oasis-candle-writer"  # visible in pg_stat_activity
        # SQLite takes one writer at a time anyway.
        self._count = connections if self._postgres else 1
        self._max_batch = max_batch
        self._on_committed = on_committed
        self._queue: deque[CandleWrite] = deque()
        self._ready: asyncio.Event | None = None
        self._stopping = False
        self._error: BaseException | None = None
        self._batches = self._candles = self._written = 0
        self._idle = 0  # writers waiting for candles
        self._in_flight = 0  # batches being written
        self._when_idle: list[Callable[[], None]] = []
        self._idle_settle_s = idle_settle_s
        self._idle_since = 0.0  # loop time the writer last became idle
        # Histogram children looked up once: a burst observes a thousand latencies.
        self._latency = {tf: INGEST_LATENCY.labels(tf.value) for tf in Timeframe}

    def submit(self, write: CandleWrite) -> None:
        """Queue a closed candle. Call from the event loop the writer runs on."""
        if self._error is not None:
            raise RuntimeError("the candle writer has stopped") from self._error
        self._queue.append(write)
        if self._ready is not None:
            self._ready.set()

    @property
    def busy(self) -> bool:
        """Candles queued or being written."""
        return bool(self._queue) or self._in_flight > 0

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call `callback` (once, from the event loop) when the writer has been idle (nothing
        queued or being written) for `idle_settle_s`: the burst is over, not between two of
        its batches. Soon if it is idle now."""
        if self.busy:
            self._when_idle.append(callback)
        else:
            asyncio.get_running_loop().call_soon(callback)

    def _idle_settled(self) -> None:
        idle_for = asyncio.get_running_loop().time() - self._idle_since
        if self.busy or not self._when_idle or idle_for < self._idle_settle_s * 0.999:
            return  # more came since: the check of the newest idle moment decides
        callbacks, self._when_idle = self._when_idle, []
        for callback in callbacks:
            callback()

    @property
    def stats(self) -> WriterStats:
        return WriterStats(self._batches, self._candles, self._written)

    @contextlib.asynccontextmanager
    async def running(
        self, *, on_failure: asyncio.Event | None = None, drain_timeout: float = 30.0
    ) -> AsyncIterator[CandleWriter]:
        """Write while the block runs; on leaving it, write everything queued, then stop
        (raising if that takes longer than `drain_timeout` seconds).

        If a write fails for a reason a retry cannot fix (a bug, a constraint refusing a
        candle), the writer stops, sets `on_failure` (the ingest loop's stop event), and
        leaving the block raises.
        """
        self._ready = asyncio.Event()
        self._stopping = False
        if self._queue:
            self._ready.set()
        workers = [
            asyncio.create_task(self._work(on_failure), name=f"candle-writer-{n}") for n in range(self._count)
        ]
        try:
            yield self
        finally:
            self._stopping = True
            self._ready.set()
            _, late = await asyncio.wait(workers, timeout=drain_timeout)
            for worker in late:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._ready = None
        if late:
            unwritten = len(self._queue)
            raise RuntimeError(
                f"the candle writer did not drain within {drain_timeout} s: {unwritten} unwritten"
            )
        if self._error is not None:
            raise RuntimeError("the candle writer failed") from self._error

    async def _work(self, on_failure: asyncio.Event | None) -> None:
        ready = self._ready
        assert ready is not None
        backend: _Backend = _PostgresBackend(self._params) if self._postgres else _ThreadBackend()
        queue = self._queue
        try:
            while self._error is None:
                if not queue:
                    if self._stopping:
                        return
                    ready.clear()
                    self._idle += 1
                    try:
                        await ready.wait()
                    finally:
                        self._idle -= 1
                    continue
                # What is queued is shared with the writers still waiting (woken by the same
                # submit, they run next): the first candles of a burst are written in parallel
                # statements instead of one writing them all while the others find nothing.
                size = min(-(-len(queue) // (self._idle + 1)), self._max_batch)
                batch = [queue.popleft() for _ in range(size)]
                self._in_flight += 1
                try:
                    await self._write(backend, batch)
                finally:
                    self._in_flight -= 1
                if not queue and not self._in_flight and self._when_idle:
                    loop = asyncio.get_running_loop()
                    self._idle_since = loop.time()
                    loop.call_later(self._idle_settle_s, self._idle_settled)
        except Exception as exc:  # recorded, reported, and raised on leaving `running`
            self._error = exc
            logger.exception("candle_writer_failed")
            ready.set()  # wake the other writers so they stop too
            if on_failure is not None:
                on_failure.set()
        finally:
            await backend.close()

    async def _write(self, backend: _Backend, batch: list[CandleWrite]) -> None:
        started = time.perf_counter()
        written = await self._write_with_retry(backend, batch)
        committed = time.time()
        took = time.perf_counter() - started
        self._batches += 1
        self._candles += len(batch)
        self._written += written
        WRITE_BATCH_SIZE.observe(len(batch))
        histograms = self._latency
        for write in batch:
            event_ms = write.kline.event_time_ms
            if event_ms is not None:
                histograms[write.kline.timeframe].observe(max(0.0, committed - event_ms / 1000))
        CANDLES_WRITTEN.inc(written)
        if self._on_committed is not None:
            self._on_committed(batch, committed, took)

    async def _write_with_retry(self, backend: _Backend, batch: list[CandleWrite]) -> int:
        # A lost connection (database restart, failover) must not lose candles: retry with
        # backoff until it works; the queue keeps filling meanwhile and nothing is dropped.
        # Anything else (a constraint refusing a candle) is a bug to surface, not to retry.
        delay = 0.1
        while True:
            try:
                return await backend.write(batch)
            except _RETRYABLE as exc:
                logger.warning("candle_write_retry", error=str(exc), delay_s=delay, batch=len(batch))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
