"""The ingest engine: streams → buffers → writer, with backfill so no closed candle is lost.

Where a closed candle can go missing, and what brings it back:
- a dropped connection: after every (re)connect each stream is backfilled over REST from its
  newest known closed candle;
- a hole inside a live stream (a close arrives after a skipped one): the gap is backfilled;
- a stream that falls silent while its peers keep closing candles: once the peers' newest close
  is older than `silence_grace` seconds and this stream has not reached it, it is backfilled.
  Comparing with peers needs no clock, so it works with the simulator's accelerated time too;
- a restart: buffers resume from the newest persisted candle of each stream, then backfill;
  holes behind it (a backfill cut short by a kill) are backfilled too (`resume_holes`);
- a graceful stop: backfills in flight get `backfill_drain_s` seconds to finish before the
  writer drains, so a stop under load leaves nothing for the next instance to find.
Backfills that fail (rate limits, outages) stay pending and are retried until they succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from marketdata.core.buffers import Gap, Outcome, StreamBuffer
from marketdata.core.klines import FrameError, Kline, parse_ws_frame
from marketdata.core.timeframes import Timeframe
from marketdata.exchanges import ExchangeProfile
from marketdata.ingest.metrics import (
    BUFFER_LAG,
    CANDLES_IGNORED,
    CANDLES_RECEIVED,
    FRAMES_REJECTED,
    GAPS_BACKFILLED,
)
from marketdata.ingest.rest import KlineHistory
from marketdata.ingest.websocket import StreamConnection
from marketdata.ingest.writer import CandleWriter, HeldWhileBusy
from marketdata.services import CandleWrite

logger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class IngestStats:
    frames: int
    closed: int
    rejected: int
    ignored: int
    backfilled: int
    pending_gaps: int


# Updates of forming candles held while the writer commits a burst (see `on_frame`): at most
# this many, and for at most `defer_max_s` seconds.
_DEFER_LIMIT = 100_000


def _is_update(raw: str | bytes) -> bool:
    """A kline update of a forming candle, by a look at its bytes (a frame that is not one,
    or is malformed, is found out when it is handled)."""
    return (b'"x":false' if isinstance(raw, bytes) else '"x":false') in raw  # type: ignore[operator]


def stream_name(symbol: str, timeframe: Timeframe) -> str:
    return f"{symbol.lower()}@kline_{timeframe.value}"


class IngestEngine:
    def __init__(
        self,
        *,
        profile: ExchangeProfile,
        symbol_ids: Mapping[str, int],
        timeframes: Sequence[Timeframe],
        writer: CandleWriter,
        resume_from: Mapping[tuple[str, Timeframe], int] | None = None,
        resume_holes: Mapping[tuple[str, Timeframe], Sequence[tuple[int, int]]] | None = None,
        lookback_candles: int = 60,
        backfill_drain_s: float = 10.0,
        silence_grace: float = 2.0,
        backfill_concurrency: int = 4,
        stale_after_s: float = 60.0,
        storm_reconnects: int = 10,
        storm_window_s: float = 300.0,
        health_alerts: bool = False,
        instance: str = "",
        defer_max_s: float = 0.25,
    ) -> None:
        self._profile = profile
        self._symbol_ids = dict(symbol_ids)
        self._timeframes = list(timeframes)
        self._writer = writer
        self._lookback = lookback_candles
        self._silence_grace = silence_grace
        self._buffers: dict[tuple[str, Timeframe], StreamBuffer] = {}
        for symbol in self._symbol_ids:
            for timeframe in self._timeframes:
                buffer = StreamBuffer(symbol, timeframe)
                buffer.last_closed_ms = (resume_from or {}).get((symbol, timeframe))
                self._buffers[(symbol, timeframe)] = buffer
        # Gauge children looked up once: the watch loop sets thousands of them every second.
        self._lag_gauges = {key: BUFFER_LAG.labels(key[0], key[1].value) for key in self._buffers}
        self._received = {source: CANDLES_RECEIVED.labels(source) for source in ("ws", "rest")}
        self._needs_lookback = {key for key, buffer in self._buffers.items() if buffer.last_closed_ms is None}
        # Per timeframe, each newer close seen on any stream and when it was first seen
        # (monotonic clock): (open time ms, seen at).
        self._frontier: dict[Timeframe, deque[tuple[int, float]]] = {}
        self._pending: dict[tuple[str, Timeframe], Gap] = {}
        self._backfill_slots = asyncio.Semaphore(backfill_concurrency)
        self._history: KlineHistory | None = None
        self._reported_kinds: set[str] = set()
        self._frames = self._closed = self._rejected = self._ignored = self._backfilled = 0
        self._gap_tasks: set[asyncio.Task[None]] = set()
        self._resume_holes = {
            key: list(holes) for key, holes in (resume_holes or {}).items() if key in self._buffers and holes
        }
        self._backfill_drain_s = backfill_drain_s
        # Updates held while the writer commits a burst: (frame, receipt wall ms).
        self._deferred: HeldWhileBusy[tuple[str | bytes, int]] = HeldWhileBusy(
            self._handle_deferred, max_s=defer_max_s
        )
        # Health: a stream silent for `stale_after_s` is stale (its connection is reconnected,
        # once per `stale_after_s`); `storm_reconnects` reconnections within `storm_window_s`
        # are a storm. Both raise alerts (off the loop) when `health_alerts` is on.
        self._stale_after_s = stale_after_s
        self._storm_reconnects, self._storm_window_s = storm_reconnects, storm_window_s
        self._health_alerts = health_alerts
        # Several ingest processes (shards) raise their own alerts: keys and titles name them.
        self._alert_suffix, self._alert_named = (f".{instance}", f" ({instance})") if instance else ("", "")
        self._connections: dict[str, StreamConnection] = {}
        self._assisted: dict[str, float] = {}
        self._alert_state: dict[str, bool] = {}
        self._alert_refreshed: dict[str, float] = {}
        self._health_calls: set[asyncio.Future[None]] = set()
        # Alert writes in one thread, one at a time: in the order they were decided (a resolve
        # never overtakes its raise) and one database writer (SQLite refuses concurrent ones).
        self._health_executor: ThreadPoolExecutor | None = None
        self.assisted_reconnects = 0

    # -- running ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until `stop` is set; then stop reading. The caller drains the writer."""
        self._history = KlineHistory(self._profile)
        for (symbol, timeframe), holes in self._resume_holes.items():
            for first_ms, last_ms in holes:
                self._schedule(Gap(symbol, timeframe, first_ms, last_ms))
        all_keys = list(self._buffers)
        per_connection = self._profile.max_streams_per_connection
        try:
            connections = []
            for index in range(0, len(all_keys), per_connection):
                keys = all_keys[index : index + per_connection]
                connections.append(
                    StreamConnection(
                        profile=self._profile,
                        streams=[stream_name(*key) for key in keys],
                        on_frame=self.on_frame,
                        on_connected=lambda keys=keys: self._catch_up(keys),  # type: ignore[misc]
                        label=f"{self._profile.name}#{index // per_connection + 1}",
                    )
                )
            for conn in connections:
                for name in conn.streams:
                    self._connections[name] = conn
            tasks = [asyncio.create_task(conn.run(stop)) for conn in connections]
            tasks.append(asyncio.create_task(self._watch(stop)))
            await asyncio.gather(*tasks)
        finally:
            self._deferred.release()
            if self._gap_tasks and self._backfill_drain_s > 0:
                # A graceful stop: what is being backfilled is written by this instance.
                _, late = await asyncio.wait(set(self._gap_tasks), timeout=self._backfill_drain_s)
                if late:
                    logger.warning("backfill_cut_short", streams=len(late), pending=len(self._pending))
            for task in list(self._gap_tasks):
                task.cancel()
            await asyncio.gather(*self._gap_tasks, return_exceptions=True)
            await self._history.close()
            await asyncio.gather(*self._health_calls, return_exceptions=True)
            if self._health_executor is not None:
                self._health_executor.shutdown(wait=False)

    @property
    def stats(self) -> IngestStats:
        return IngestStats(
            self._frames, self._closed, self._rejected, self._ignored, self._backfilled, len(self._pending)
        )

    # -- frames -----------------------------------------------------------------------------

    def on_frame(self, raw: str | bytes) -> None:
        """Handle one WebSocket frame. Never raises: a bad frame is counted and skipped.

        While the writer has closed candles to commit, an update of a forming candle (a frame
        with `"x":false`) waits: a close burst is followed at once by the new candles' first
        updates, a thousand frames whose parsing would take the cores the burst's writes need.
        They are handled, in the order received and with their receipt time, as soon as the
        writer is idle, before any later final frame, and at most `defer_max_s` after the first
        of them; nothing is written for them, so only the forming candle's refresh waits.
        """
        self._frames += 1
        now_ms = int(time.time() * 1000)
        if _is_update(raw) and (self._deferred or self._writer.busy) and len(self._deferred) < _DEFER_LIMIT:
            self._deferred.hold((raw, now_ms), self._writer)
            return
        self._deferred.release()  # what was received before this frame is handled before it
        self._handle(raw, now_ms)

    def _handle_deferred(self, deferred: list[tuple[str | bytes, int]]) -> None:
        for raw, wall_ms in deferred:
            self._handle(raw, wall_ms)

    def _handle(self, raw: str | bytes, wall_ms: int) -> None:
        try:
            kline = parse_ws_frame(raw)
        except FrameError as exc:
            self._reject(exc.kind, str(exc))
            return
        if kline is None:
            return
        buffer = self._buffers.get((kline.symbol, kline.timeframe))
        if buffer is None:
            self._reject("unknown_stream", f"{kline.symbol} {kline.timeframe.value} is not subscribed")
            return
        outcome, gap = buffer.apply(kline, wall_ms=wall_ms)
        if outcome is Outcome.CLOSED:
            self._closed += 1
            self._submit(kline, source="ws")
            self._advance_frontier(kline)
            if gap is not None:
                self._schedule(gap)
        elif outcome in (Outcome.DUPLICATE, Outcome.STALE):
            self._ignored += 1
            CANDLES_IGNORED.labels(outcome.value).inc()

    def _reject(self, kind: str, detail: str) -> None:
        self._rejected += 1
        FRAMES_REJECTED.labels(kind).inc()
        if kind not in self._reported_kinds:  # once per kind, or a flood would drown the log
            self._reported_kinds.add(kind)
            logger.warning("frame_rejected", kind=kind, detail=detail[:200])

    def _submit(self, kline: Kline, *, source: str) -> None:
        self._received[source].inc()
        self._writer.submit(CandleWrite(self._symbol_ids[kline.symbol], kline, source))

    def _advance_frontier(self, kline: Kline) -> None:
        log = self._frontier.get(kline.timeframe)
        if log is None:
            log = self._frontier[kline.timeframe] = deque(maxlen=256)
        if not log or kline.open_time_ms > log[-1][0]:
            log.append((kline.open_time_ms, time.monotonic()))

    def _settled_frontier(self, timeframe: Timeframe, now: float) -> int | None:
        """The newest close that every healthy stream of `timeframe` has had time to deliver."""
        for open_time, seen_at in reversed(self._frontier.get(timeframe, ())):
            if now - seen_at >= self._silence_grace:
                return open_time
        return None

    # -- backfill ---------------------------------------------------------------------------

    async def _catch_up(self, keys: Sequence[tuple[str, Timeframe]]) -> None:
        """After a (re)connect: fetch every closed candle the streams may have missed."""
        assert self._history is not None
        now_ms = await self._history.server_time_ms()
        for key in keys:
            symbol, timeframe = key
            buffer = self._buffers[key]
            newest_closed = timeframe.bucket_start(now_ms) - timeframe.ms
            if key in self._needs_lookback:
                # A stream with nothing stored: its recent history, once. Frames may already
                # have closed a candle on this connection; overlapping is harmless (idempotent).
                self._needs_lookback.discard(key)
                if self._lookback <= 0:
                    continue
                first = newest_closed - (self._lookback - 1) * timeframe.ms
            elif buffer.last_closed_ms is None:
                continue
            else:
                first = buffer.last_closed_ms + timeframe.ms
            if first <= newest_closed:
                self._schedule(Gap(symbol, timeframe, first, newest_closed))

    def _schedule(self, gap: Gap) -> None:
        key = (gap.symbol, gap.timeframe)
        pending = self._pending.get(key)
        if pending is not None:
            gap = Gap(
                gap.symbol,
                gap.timeframe,
                min(gap.first_ms, pending.first_ms),
                max(gap.last_ms, pending.last_ms),
            )
        self._pending[key] = gap
        if pending is None:
            task = asyncio.create_task(self._backfill(key))
            self._gap_tasks.add(task)
            task.add_done_callback(self._gap_tasks.discard)

    async def _backfill(self, key: tuple[str, Timeframe]) -> None:
        assert self._history is not None
        delay = 1.0
        while key in self._pending:
            gap = self._pending[key]
            try:
                async with self._backfill_slots:
                    klines = await self._history.fetch_closed(
                        symbol=gap.symbol, timeframe=gap.timeframe, first_ms=gap.first_ms, last_ms=gap.last_ms
                    )
            except Exception as exc:  # noqa: BLE001 - a failed backfill is retried, never dropped
                logger.warning(
                    "backfill_failed", symbol=gap.symbol, timeframe=gap.timeframe.value, error=str(exc)[:200]
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            buffer = self._buffers[key]
            for kline in klines:
                buffer.mark_closed(kline)
                self._submit(kline, source="rest")
                self._advance_frontier(kline)
            self._backfilled += len(klines)
            GAPS_BACKFILLED.inc(len(klines))
            if self._pending.get(key) == gap:
                del self._pending[key]
            # else: the gap grew while we fetched; loop for the rest.
            logger.info(
                "backfilled",
                symbol=gap.symbol,
                timeframe=gap.timeframe.value,
                candles=len(klines),
                expected=gap.count,
            )

    async def _watch(self, stop: asyncio.Event) -> None:
        """Once a second: staleness gauges, and backfill for streams left behind by their peers."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            now_wall_ms = time.time() * 1000
            now = time.monotonic()
            stale: list[tuple[str, Timeframe, float]] = []
            for (symbol, timeframe), buffer in self._buffers.items():
                if buffer.last_frame_wall_ms is not None:
                    lag = (now_wall_ms - buffer.last_frame_wall_ms) / 1000
                    self._lag_gauges[(symbol, timeframe)].set(lag)
                    if lag > self._stale_after_s:
                        stale.append((symbol, timeframe, lag))
                if (symbol, timeframe) in self._pending:
                    continue
                settled = self._settled_frontier(timeframe, now)
                if settled is None:
                    continue
                if buffer.last_closed_ms is None or buffer.last_closed_ms < settled:
                    first = settled if buffer.last_closed_ms is None else buffer.last_closed_ms + timeframe.ms
                    self._schedule(Gap(symbol, timeframe, first, settled))
            self._health(stale, now)

    # -- health -------------------------------------------------------------------------------

    def _health(self, stale: list[tuple[str, Timeframe, float]], now: float) -> None:
        """Assisted reconnect of connections carrying stale streams, and the stale-stream and
        reconnect-storm alerts (raised and resolved on state changes, refreshed each minute)."""
        for connection in {
            self._connections[stream_name(symbol, tf)]
            for symbol, tf, _ in stale
            if stream_name(symbol, tf) in self._connections
        }:
            label = id(connection)
            last = self._assisted.get(str(label))
            if (last is None or now - last >= self._stale_after_s) and connection.request_reconnect(
                f"stream silent over {self._stale_after_s:.0f} s"
            ):
                self._assisted[str(label)] = now
                self.assisted_reconnects += 1
        exchange, suffix, named = self._profile.name, self._alert_suffix, self._alert_named
        worst = sorted(stale, key=lambda item: -item[2])[:5]
        self._alert(
            f"ingest.stale.{exchange}{suffix}",
            bool(stale),
            title=f"{len(stale)} stream(s) of {exchange} silent over {self._stale_after_s:.0f} s{named}",
            detail=", ".join(f"{symbol} {tf.value} {lag:.0f} s" for symbol, tf, lag in worst),
            now=now,
        )
        storm_since = now - self._storm_window_s
        recent = sum(
            sum(1 for at in conn.reconnects if at >= storm_since) for conn in set(self._connections.values())
        )
        self._alert(
            f"ingest.reconnect_storm.{exchange}{suffix}",
            recent >= self._storm_reconnects,
            title=f"{recent} WebSocket reconnections to {exchange} in {self._storm_window_s / 60:.0f} min"
            + named,
            detail="the exchange or the network is dropping connections",
            now=now,
        )

    def _alert(self, key: str, firing: bool, *, title: str, detail: str, now: float) -> None:
        if not self._health_alerts:
            return
        was = self._alert_state.get(key, False)
        refresh = firing and now - self._alert_refreshed.get(key, -1e9) >= 60
        if firing == was and not refresh:
            return
        self._alert_state[key] = firing
        if firing:
            self._alert_refreshed[key] = now

        def call() -> None:
            from django.db import connection

            from audit.alerting import alert_raise, alert_resolve

            try:
                if firing:
                    alert_raise(
                        key=key, severity="critical", title=title, detail=detail, actor="system:ingest"
                    )
                else:
                    alert_resolve(key=key, actor="system:ingest")
            except Exception:  # the database is down: the next state change or refresh retries
                logger.exception("ingest_health_alert_failed", key=key)
                self._alert_state.pop(key, None)
            finally:
                connection.close()  # a rare call from a pool thread: no connection left behind

        if self._health_executor is None:
            self._health_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-health")
        future = asyncio.get_running_loop().run_in_executor(self._health_executor, call)
        self._health_calls.add(future)
        future.add_done_callback(self._health_calls.discard)
