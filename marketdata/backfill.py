"""Backfill: closed candles an exchange has and we do not, fetched over REST and written in bulk;
candles it has none for (nothing traded) imputed from the previous close.

`backfill_range` serves `manage.py backfill` and `gap_backfill` the Celery task that closes a
recorded `Gap`. Both ask `candle_gaps` what is missing first, so a run over a range already held
writes nothing, and a run cut short resumes where it stopped. See
docs/decisions/0015-backfill-and-imputation.md.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import ccxt
import structlog
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from marketdata.core.backfill_pages import (
    KlineRows,
    PageRejected,
    imputed_kline,
    missing_open_times,
    page_rows,
)
from marketdata.core.timeframes import Timeframe, ms_from_datetime, utc_from_ms
from marketdata.exchanges import ExchangeProfile, exchange_profile
from marketdata.ingest.metrics import BACKFILL_CANDLES, BACKFILL_PAGES_REJECTED, BACKFILL_WAITS
from marketdata.ingest.rest import ccxt_client
from marketdata.models import Candle, Gap, Symbol
from marketdata.resampling import derived_candles_refresh
from marketdata.selectors import candle_gaps
from marketdata.services import CandleRows, CandleWrite, candles_upsert_closed, candles_upsert_rows

logger = structlog.get_logger(__name__)

ACTOR = "system:backfill"
BATCH_ROWS = 50_000  # candles per write: COPY's cost per row is flat well before this
WEIGHT_WINDOW_S = 60.0


@dataclass(frozen=True)
class BackfillLimits:
    """How hard a backfill may press one exchange's REST API.

    `weight_budget_per_minute` is kept below the exchange's own limit so that the live
    ingestion's backfills (same IP) still have room. The budget is checked against our own count
    of the last minute and against `X-MBX-USED-WEIGHT-1M` when the exchange sends it (which also
    counts other processes on the IP).
    """

    weight_per_request: int = 2  # Binance's weight of /api/v3/klines (limit 1000) today
    weight_budget_per_minute: int = 4800  # of Binance's 6,000
    max_retry_after_s: float = 300.0  # a longer Retry-After (a 418 ban) fails the run instead
    max_attempts: int = 5  # per request: 429/418 and network errors
    page_rows: int | None = None  # rows per request; None: the profile's klines_limit (1000)


# Per exchange; anything not listed gets the defaults.
BACKFILL_LIMITS: dict[str, BackfillLimits] = {
    "binance": BackfillLimits(),
    "binanceus": BackfillLimits(weight_budget_per_minute=960),  # its limit is 1,200
    # The simulator counts weight as Binance does (6,000 a minute) and answers 429 past it.
    "sim": BackfillLimits(weight_budget_per_minute=5000),
}


class BackfillInputError(ValueError):
    """A request that cannot be run (unknown exchange, symbol or timeframe, a range in the
    wrong order or before the exchange's history). Raised before anything is written."""


class BackfillFailed(RuntimeError):
    """A run that stopped: the exchange failed or answered something unusable. `result` holds
    what was written before (those candles stay: the next run resumes after them)."""

    def __init__(self, reason: str, result: BackfillResult | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result


@dataclass
class BackfillResult:
    exchange: str
    symbol: str
    timeframe: Timeframe
    since_ms: int
    until_ms: int
    dry_run: bool = False
    ranges: list[tuple[int, int]] = field(default_factory=list)  # missing when the run started
    missing: int = 0
    backfilled: int = 0  # candles from the exchange written (or, dry run, to write)
    imputed: int = 0
    unimputable: int = 0  # missing, no candle from the exchange and no earlier close to impute from
    derived: int = 0  # derived candles (re)written
    requests: int = 0
    rest_seconds: float = 0.0  # waiting on the exchange's REST (including weight/Retry-After pauses)
    write_seconds: float = 0.0
    derive_seconds: float = 0.0
    reason: str = ""

    @property
    def done(self) -> int:
        return self.backfilled + self.imputed + self.unimputable

    def payload(self) -> dict[str, Any]:
        """The audit payload: what was asked, what was found, what was written."""
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "timeframe": self.timeframe.value,
            "since": _iso(self.since_ms),
            "until": _iso(self.until_ms),
            "missing": self.missing,
            "ranges": len(self.ranges),
            "backfilled": self.backfilled,
            "imputed": self.imputed,
            "unimputable": self.unimputable,
            "derived": self.derived,
            "requests": self.requests,
            "reason": self.reason,
        }


Progress = Callable[[int, int], None]  # (open times handled, open times missing)


class KlinePager:
    """Klines of one exchange through ccxt's raw endpoint (exact strings, not `fetch_ohlcv`'s
    floats), within a request-weight budget, waiting out 429/418 as `Retry-After` asks."""

    def __init__(
        self,
        profile: ExchangeProfile,
        limits: BackfillLimits | None = None,
        *,
        client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.profile = profile
        self.limits = limits or BACKFILL_LIMITS.get(profile.name, BackfillLimits())
        self.page_rows = self.limits.page_rows or profile.klines_limit
        self._client = client if client is not None else ccxt_client(profile, async_client=False)
        self._sleep = sleep
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._spent: deque[tuple[float, int]] = deque()  # (monotonic time, weight) of the last minute
        self._reported: tuple[int, float] | None = None  # (X-MBX-USED-WEIGHT-1M, wall time read)
        self.requests = 0
        self.rest_seconds = 0.0

    def close(self) -> None:
        session = getattr(self._client, "session", None)
        if session is not None:
            session.close()

    def server_time_ms(self) -> int:
        return int(self._call("publicGetTime", {})["serverTime"])

    def first_open_ms(self, symbol: str, timeframe: Timeframe) -> int | None:
        """Open time of the exchange's first candle of the stream (None: it has none)."""
        rows = self._call(
            "publicGetKlines", {"symbol": symbol, "interval": timeframe.value, "startTime": 0, "limit": 1}
        )
        return int(rows[0][0]) if rows else None

    def close_before(self, symbol: str, timeframe: Timeframe, open_ms: int, now_ms: int) -> Decimal | None:
        """Close of the exchange's last candle opening before `open_ms` (None: there is none)."""
        end = open_ms - 1
        rows = self._call(
            "publicGetKlines", {"symbol": symbol, "interval": timeframe.value, "endTime": end, "limit": 1}
        )
        page = self._validated(rows, symbol, timeframe, 0, open_ms - timeframe.ms, now_ms)
        return Decimal(page.close[-1]) if len(page) else None

    def pages(
        self, symbol: str, timeframe: Timeframe, first_ms: int, last_ms: int, now_ms: int
    ) -> Iterator[tuple[int, int, KlineRows]]:
        """(first, last, rows): every open time first … last has been asked for, and `rows` are
        all the candles the exchange has among them, validated, in order. Pages of `page_rows`
        rows; a page that is not valid whole raises `BackfillFailed`."""
        step = timeframe.ms
        start = first_ms
        while start <= last_ms:
            rows = self._call(
                "publicGetKlines",
                {
                    "symbol": symbol,
                    "interval": timeframe.value,
                    "startTime": start,
                    "endTime": last_ms + step - 1,
                    "limit": self.page_rows,
                },
            )
            page = self._validated(rows, symbol, timeframe, start, last_ms, now_ms)
            if len(page) < self.page_rows:
                # The exchange gave everything it has up to endTime.
                yield start, last_ms, page
                return
            covered = page.open_time_ms[-1]
            yield start, covered, page
            start = covered + step

    def _validated(
        self, rows: Any, symbol: str, timeframe: Timeframe, first_ms: int, last_ms: int, now_ms: int
    ) -> KlineRows:
        try:
            return page_rows(
                rows, symbol=symbol, timeframe=timeframe, first_ms=first_ms, last_ms=last_ms, now_ms=now_ms
            )
        except PageRejected as error:
            BACKFILL_PAGES_REJECTED.labels(error.kind).inc()
            logger.warning(
                "backfill_page_rejected", symbol=symbol, timeframe=timeframe.value, first_ms=first_ms,
                error=str(error),
            )  # fmt: skip
            raise BackfillFailed(
                f"{self.profile.name} {symbol} {timeframe} page from {_iso(first_ms)} rejected: {error}"
            ) from None

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        delay = 0.5
        started = self._monotonic()
        try:
            for attempt in range(1, self.limits.max_attempts + 1):
                self._wait_for_weight()
                self.requests += 1
                try:
                    answer = getattr(self._client, method)(params)
                except (ccxt.DDoSProtection, ccxt.RateLimitExceeded) as error:
                    # 429 (slow down) and 418 (banned for a while): the exchange says how long.
                    self._note_used_weight()
                    retry_after = self._retry_after()
                    wait = delay if retry_after is None else retry_after
                    if wait > self.limits.max_retry_after_s:
                        raise BackfillFailed(
                            f"{self.profile.name} asks to wait {wait:g} s before {method} "
                            f"(more than {self.limits.max_retry_after_s:g} s): {_short(error)}"
                        ) from None
                    BACKFILL_WAITS.labels("retry_after").inc()
                    failure = f"rate limited: {_short(error)}"
                except (ccxt.ExchangeNotAvailable, ccxt.RequestTimeout, ccxt.NetworkError) as error:
                    wait = delay
                    failure = _short(error)
                except ccxt.BaseError as error:
                    raise BackfillFailed(f"{self.profile.name} {method}: {_short(error)}") from None
                else:
                    self._note_used_weight()
                    return answer
                logger.warning(
                    "backfill_rest_retry", method=method, attempt=attempt, wait_s=wait, error=failure
                )
                if attempt < self.limits.max_attempts:
                    self._sleep(wait)
                    delay = min(delay * 2, 30.0)
            raise BackfillFailed(
                f"{self.profile.name} {method} failed after {self.limits.max_attempts} attempts: {failure}"
            )
        finally:
            self.rest_seconds += self._monotonic() - started

    def _wait_for_weight(self) -> None:
        """Pause until one more request fits the budget: by our own count of the last minute,
        and by the exchange's count (its window is the wall-clock minute)."""
        weight, budget = self.limits.weight_per_request, self.limits.weight_budget_per_minute
        now = self._monotonic()
        while self._spent and now - self._spent[0][0] >= WEIGHT_WINDOW_S:
            self._spent.popleft()
        wait = 0.0
        spent = sum(w for _, w in self._spent)
        if self._spent and spent + weight > budget:
            wait = WEIGHT_WINDOW_S - (now - self._spent[0][0])
        if self._reported is not None:
            used, read_at = self._reported
            wall = self._wall_clock()
            if wall // 60 == read_at // 60 and used + weight > budget:
                wait = max(wait, 60 - wall % 60)
        if wait > 0:
            BACKFILL_WAITS.labels("weight_budget").inc()
            logger.info("backfill_weight_wait", wait_s=round(wait, 3), spent=spent, budget=budget)
            self._sleep(wait)
            self._reported = None
            now = self._monotonic()
            while self._spent and now - self._spent[0][0] >= WEIGHT_WINDOW_S:
                self._spent.popleft()
        self._spent.append((now, weight))

    def _note_used_weight(self) -> None:
        value = _header(self._client.last_response_headers, "x-mbx-used-weight-1m")
        if value is not None and value.isdigit():
            self._reported = (int(value), self._wall_clock())

    def _retry_after(self) -> float | None:
        value = _header(self._client.last_response_headers, "retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


def backfill_range(
    *,
    exchange: str,
    symbol: str,
    timeframe: Timeframe | str,
    since: datetime,
    until: datetime | None = None,
    actor: str = ACTOR,
    dry_run: bool = False,
    limits: BackfillLimits | None = None,
    batch_rows: int = BATCH_ROWS,
    progress: Progress | None = None,
) -> BackfillResult:
    """Fetch and write every closed candle of (exchange, symbol, timeframe) with open time in
    [since, until] that is not stored; impute those the exchange has none for. Then refresh the
    derived candles over what was written, and audit the run.

    `since` is rounded up and `until` down to the timeframe's boundaries; `until` defaults to
    (and is capped at) the exchange's newest closed candle. Bad input raises
    `BackfillInputError` before anything is written; an exchange failure or a rejected page
    raises `BackfillFailed` after writing what was fetched before it (`error.result`). With
    `dry_run` nothing is written nor audited: the result says what would be.
    """
    profile, tf, symbol_row = _resolve(exchange, symbol, timeframe)
    if since.tzinfo is None or (until is not None and until.tzinfo is None):
        raise BackfillInputError("since and until must be timezone-aware (UTC)")
    since_ms = -(-ms_from_datetime(since) // tf.ms) * tf.ms
    asked_until_ms = None if until is None else ms_from_datetime(until) // tf.ms * tf.ms
    if until is not None and ms_from_datetime(until) < ms_from_datetime(since):
        raise BackfillInputError(f"since {since.isoformat()} is after until {until.isoformat()}")
    pager = KlinePager(profile, limits)
    try:
        now_ms = pager.server_time_ms()
        newest_closed = now_ms // tf.ms * tf.ms - tf.ms
        until_ms = newest_closed if asked_until_ms is None else min(asked_until_ms, newest_closed)
        if since_ms > until_ms:
            raise BackfillInputError(
                f"no closed {tf} candle opens in the range from {since.isoformat()}: the newest closed "
                f"one on {profile.name} opened at {_iso(newest_closed)}"
            )
        first_ms = pager.first_open_ms(symbol_row.symbol, tf)
        if first_ms is None:
            raise BackfillInputError(f"{profile.name} has no {tf} candles of {symbol_row.symbol}")
        if since_ms < first_ms:
            raise BackfillInputError(
                f"since {_iso(since_ms)} is before {profile.name}'s history of {symbol_row.symbol} {tf}, "
                f"which starts at {_iso(first_ms)}"
            )
        result = BackfillResult(
            exchange=profile.name,
            symbol=symbol_row.symbol,
            timeframe=tf,
            since_ms=since_ms,
            until_ms=until_ms,
            dry_run=dry_run,
        )
        result.ranges = candle_gaps(
            symbol_id=symbol_row.pk, timeframe=tf, since_ms=since_ms, until_ms=until_ms
        )
        result.missing = sum((last - first) // tf.ms + 1 for first, last in result.ranges)
        run = _Run(
            pager, symbol_row, tf, result, now_ms, actor=actor, batch_rows=batch_rows, progress=progress
        )
        try:
            for first, last in result.ranges:
                run.fill(first, last)
            run.flush()
        except BackfillFailed as error:
            result.reason = error.reason
            run.finish()
            raise BackfillFailed(error.reason, result) from None
        run.finish()
        return result
    finally:
        pager.close()


class _Run:
    """One backfill_range in progress: the writes not yet flushed and the spans written."""

    def __init__(
        self,
        pager: KlinePager,
        symbol: Symbol,
        timeframe: Timeframe,
        result: BackfillResult,
        now_ms: int,
        *,
        actor: str,
        batch_rows: int,
        progress: Progress | None,
    ) -> None:
        self.pager = pager
        self.symbol = symbol
        self.timeframe = timeframe
        self.result = result
        self.now_ms = now_ms
        self.actor = actor
        self.batch_rows = batch_rows
        self.progress = progress
        self.real = KlineRows(timeframe)
        self.imputed: list[CandleWrite] = []
        self.written_spans: list[tuple[int, int]] = []  # open times of each range written so far
        self._span_start: int | None = None

    def fill(self, first_ms: int, last_ms: int) -> None:
        """Fetch the open times first … last (all missing) and queue their writes."""
        tf = self.timeframe
        previous_close: Decimal | None = None  # of the candle before the next page
        looked_back = False
        self._span_start = None
        for page_first, page_last, page in self.pager.pages(
            self.symbol.symbol, tf, first_ms, last_ms, self.now_ms
        ):
            opened = page.open_time_ms
            holes = list(missing_open_times(opened, timeframe=tf, first_ms=page_first, last_ms=page_last))
            if holes:
                close_at = dict(zip(opened, page.close, strict=True))
                for hole_first, hole_last in holes:
                    if hole_first == page_first:
                        if previous_close is None and not looked_back:
                            previous_close = self._close_before(hole_first)
                            looked_back = True
                        close = previous_close
                    else:  # the page's candle just before the hole
                        close = Decimal(close_at[hole_first - tf.ms])
                    self._impute(hole_first, hole_last, close)
            if len(page):
                self.real.extend(page)
                self.result.backfilled += len(page)
                previous_close = Decimal(page.close[-1])
            looked_back = True
            self._note_span(page_first, page_last)
            if len(self.real) + len(self.imputed) >= self.batch_rows:
                self.flush()
            if self.progress is not None:
                self.progress(self.result.done, self.result.missing)

    def _impute(self, first_ms: int, last_ms: int, close: Decimal | None) -> None:
        """Impute open times first … last (none of which the exchange has) at `close`, the close
        of the last candle before them; without one they stay missing, and the run says so."""
        count = (last_ms - first_ms) // self.timeframe.ms + 1
        if close is None:
            self.result.unimputable += count
            if not self.result.reason:
                self.result.reason = (
                    f"{count} candle(s) from {_iso(first_ms)} cannot be imputed: neither the database "
                    f"nor {self.pager.profile.name} has a candle before them"
                )
            return
        name, symbol_id, tf = self.symbol.symbol, self.symbol.pk, self.timeframe
        self.imputed.extend(
            CandleWrite(
                symbol_id,
                imputed_kline(symbol=name, timeframe=tf, open_time_ms=opened, previous_close=close),
                "imputed",
                imputed=True,
            )
            for opened in range(first_ms, last_ms + 1, tf.ms)
        )
        self.result.imputed += count

    def _close_before(self, open_ms: int) -> Decimal | None:
        stored = (
            Candle.objects.filter(
                symbol_id=self.symbol.pk, timeframe=self.timeframe.value, open_time__lt=utc_from_ms(open_ms)
            )
            .order_by("-open_time")
            .values_list("close", flat=True)
            .first()
        )
        if stored is not None:
            return stored
        return self.pager.close_before(self.symbol.symbol, self.timeframe, open_ms, self.now_ms)

    def _note_span(self, first_ms: int, last_ms: int) -> None:
        if self._span_start is None:
            self._span_start = first_ms
            self.written_spans.append((first_ms, last_ms))
        else:
            self.written_spans[-1] = (self._span_start, last_ms)

    def flush(self) -> None:
        if not len(self.real) and not self.imputed:
            return
        real, imputed = self.real, self.imputed
        self.real, self.imputed = KlineRows(self.timeframe), []
        if self.result.dry_run:
            return
        started = time.monotonic()
        result = self.result
        with transaction.atomic():
            candles_upsert_rows(
                rows=CandleRows(
                    self.symbol.pk, self.timeframe, "rest", real.open_time_ms, real.open, real.high, real.low,
                    real.close, real.volume, real.quote_volume, real.trades,
                )
            )  # fmt: skip
            candles_upsert_closed(writes=imputed)
            if imputed:
                audit_record(
                    actor=self.actor,
                    action="marketdata.candles_imputed",
                    obj=self.symbol,
                    payload={
                        "exchange": result.exchange,
                        "symbol": result.symbol,
                        "timeframe": result.timeframe.value,
                        "first": _iso(imputed[0].kline.open_time_ms),
                        "last": _iso(imputed[-1].kline.open_time_ms),
                        "count": len(imputed),
                    },
                )
        BACKFILL_CANDLES.labels("fetched").inc(len(real))
        BACKFILL_CANDLES.labels("imputed").inc(len(imputed))
        result.write_seconds += time.monotonic() - started

    def finish(self) -> None:
        """Derived candles over what was written, then the audit record of the run."""
        result = self.result
        result.requests = self.pager.requests
        result.rest_seconds = self.pager.rest_seconds
        if result.dry_run:
            return
        self.flush()
        started = time.monotonic()
        if result.backfilled or result.imputed:
            for first, last in self.written_spans:
                result.derived += derived_candles_refresh(
                    symbol_id=self.symbol.pk, timeframe=self.timeframe, first_ms=first, last_ms=last
                )
        result.derive_seconds = time.monotonic() - started
        audit_record(
            actor=self.actor, action="marketdata.backfill", obj=self.symbol, payload=result.payload()
        )
        logger.info("backfill_done", **result.payload())


def gap_backfill(*, gap_id: int, retry_base_s: float = 60.0, retry_cap_s: float = 3600.0) -> Gap:
    """Close one recorded gap from the exchange's history (the Celery task's body).

    Success: `backfilled`, or `imputed` when any candle had to be imputed, with the counts and
    `resolved_at`. Failure (the exchange failed, a page was rejected, nothing to impute from):
    `failed` with the reason and `next_attempt_at` after an exponential backoff (retry_base_s
    doubling per attempt, at most retry_cap_s). A resolved gap is left as it is.
    """
    with transaction.atomic():
        gap = Gap.objects.select_for_update().select_related("symbol").get(pk=gap_id)
        if gap.status in (Gap.Status.BACKFILLED, Gap.Status.IMPUTED):
            return gap
        gap.attempts += 1
        gap.save(update_fields=["attempts"])
    result: BackfillResult | None = None
    try:
        result = backfill_range(
            exchange=gap.symbol.exchange,
            symbol=gap.symbol.symbol,
            timeframe=gap.timeframe,
            since=gap.start,
            until=gap.end,
        )
        reason = result.reason if result.unimputable else ""
    except BackfillFailed as error:
        result, reason = error.result, error.reason
    except BackfillInputError as error:
        reason = str(error)
    now = timezone.now()
    if result is not None:
        gap.candles_backfilled += result.backfilled
        gap.candles_imputed += result.imputed
    if reason:
        delay = min(retry_cap_s, retry_base_s * 2 ** (gap.attempts - 1))
        gap.status, gap.reason, gap.next_attempt_at = (
            Gap.Status.FAILED,
            reason,
            now + timedelta(seconds=delay),
        )
    else:
        gap.status = Gap.Status.IMPUTED if gap.candles_imputed else Gap.Status.BACKFILLED
        gap.reason, gap.next_attempt_at, gap.resolved_at = "", None, now
    gap.save(
        update_fields=[
            "status", "reason", "next_attempt_at", "resolved_at", "candles_backfilled", "candles_imputed",
        ]
    )  # fmt: skip
    return gap


def _resolve(
    exchange: str, symbol: str, timeframe: Timeframe | str
) -> tuple[ExchangeProfile, Timeframe, Symbol]:
    try:
        profile = exchange_profile(exchange, overrides=settings.OASIS_EXCHANGE_URLS)
    except ValueError as error:
        raise BackfillInputError(str(error)) from None
    try:
        tf = Timeframe.parse(str(timeframe))
    except ValueError as error:
        raise BackfillInputError(str(error)) from None
    if tf not in profile.streamed_timeframes:
        served = ", ".join(t.value for t in Timeframe if t in profile.streamed_timeframes)
        raise BackfillInputError(
            f"{profile.name} does not serve {tf} candles (they are derived by resampling); it serves {served}"
        )
    row = Symbol.objects.filter(exchange=profile.name, symbol=symbol.upper()).first()
    if row is None:
        known = list(Symbol.objects.filter(exchange=profile.name).values_list("symbol", flat=True)[:21])
        listing = ", ".join(known[:20]) + (" …" if len(known) > 20 else "")
        raise BackfillInputError(
            f"unknown {profile.name} symbol {symbol!r}; known: {listing or 'none'} "
            f"(run `manage.py sync_symbols --exchange {profile.name}` to load them)"
        )
    return profile, tf, row


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    return next((value for key, value in headers.items() if key.lower() == name), None)


def _short(error: Exception) -> str:
    return str(error)[:300]


def _iso(ms: int) -> str:
    return utc_from_ms(ms).isoformat().replace("+00:00", "Z")
