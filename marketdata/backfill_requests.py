"""A backfill asked for by hand (the REST API): recorded as a `Gap` over the requested range and
queued to the gap backfill, the same machinery that closes the gaps the scan finds.

Recording it first gives the request an id a script can poll (`GET /api/v1/gaps/?…`), its retries
with backoff when the exchange fails, and its outcome (backfilled, imputed, failed with the
reason), without a second path to the exchange. The backfill itself fetches only what is missing
(`marketdata.selectors.candle_gaps`), so a range partly held costs only the rest.
See docs/decisions/0021-rest-api.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import Actor, audit_record
from marketdata.core.timeframes import Timeframe, ms_from_datetime, utc_from_ms
from marketdata.exchanges import exchange_profile
from marketdata.models import Gap, Symbol
from marketdata.selectors import symbol_find
from marketdata.tasks import gap_backfill_start


class BackfillRequestError(ValueError):
    """A request that cannot be queued; `field` names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class BackfillRequest:
    exchange: str
    symbol: str
    timeframe: str
    start: datetime
    end: datetime


def backfill_request_validate(request: BackfillRequest) -> tuple[Symbol, Timeframe, datetime, datetime]:
    """The symbol, timeframe and range (open times on the timeframe's boundaries: start rounded
    up, end down, end at most the newest closed candle) of a valid request; otherwise
    BackfillRequestError naming the field. Nothing is asked of the exchange here."""
    try:
        profile = exchange_profile(request.exchange, overrides=settings.OASIS_EXCHANGE_URLS)
    except ValueError as error:
        raise BackfillRequestError("exchange", str(error)) from None
    try:
        timeframe = Timeframe.parse(request.timeframe)
    except ValueError as error:
        raise BackfillRequestError("timeframe", str(error)) from None
    if timeframe not in profile.streamed_timeframes:
        served = ", ".join(tf.value for tf in Timeframe if tf in profile.streamed_timeframes)
        raise BackfillRequestError(
            "timeframe",
            f"{profile.name} does not serve {timeframe} candles (they are resampled); it serves {served}",
        )
    symbol = symbol_find(exchange=profile.name, name=request.symbol)
    if symbol is None:
        raise BackfillRequestError("symbol", f"unknown {profile.name} symbol {request.symbol!r}")
    if request.start > request.end:
        raise BackfillRequestError("start", "must not be after end")
    step = timeframe.ms
    first_ms = -(-ms_from_datetime(request.start) // step) * step
    newest_closed = ms_from_datetime(timezone.now()) // step * step - step
    last_ms = min(ms_from_datetime(request.end) // step * step, newest_closed)
    if first_ms > last_ms:
        raise BackfillRequestError(
            "start",
            f"no closed {timeframe} candle opens between start and end (the newest closed one "
            f"opened at {utc_from_ms(newest_closed).isoformat()})",
        )
    return symbol, timeframe, utc_from_ms(first_ms), utc_from_ms(last_ms)


@transaction.atomic
def backfill_request_submit(*, request: BackfillRequest, actor: Actor) -> Gap:
    """Record the range as a gap (the same range asked again reopens its gap) and queue its
    backfill after commit. Audited as `marketdata.backfill.request`."""
    symbol, timeframe, start, end = backfill_request_validate(request)
    gap, created = Gap.objects.select_for_update().get_or_create(
        symbol=symbol,
        timeframe=timeframe.value,
        start=start,
        end=end,
        defaults={"detected_at": timezone.now()},
    )
    reopened = not created and gap.status != Gap.Status.OPEN
    if reopened:
        gap.status, gap.reason, gap.next_attempt_at, gap.resolved_at = Gap.Status.OPEN, "", None, None
        gap.save(update_fields=["status", "reason", "next_attempt_at", "resolved_at"])
    audit_record(
        actor=actor,
        action="marketdata.backfill.request",
        obj=gap,
        payload={
            "exchange": symbol.exchange,
            "symbol": symbol.symbol,
            "timeframe": timeframe.value,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "gap": gap.pk,
            "created": created,
            "reopened": reopened,
        },
    )
    transaction.on_commit(lambda: gap_backfill_start(gap))
    return gap
