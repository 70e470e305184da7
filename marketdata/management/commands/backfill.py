import getpass
import time
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper

from marketdata.backfill import BackfillFailed, BackfillInputError, BackfillResult, backfill_range
from marketdata.exchanges import PROFILES, exchange_profile
from marketdata.management.options import symbols_option, timeframes_option

NOT_SERVED = "{exchange} does not serve {name} candles (they are derived by resampling); valid: "


class Command(BaseCommand):
    help = (
        "Backfill closed candles from an exchange's REST history: fetch what the database lacks "
        "in [--since, --until], impute candles the exchange has none for, refresh derived candles. "
        "Safe to run again: a range already held writes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--exchange", default=settings.OASIS_EXCHANGE, help=f"one of {', '.join(PROFILES)}"
        )
        parser.add_argument("--symbols", required=True, help="comma-separated symbols, or 'all'")
        parser.add_argument("--timeframes", default="1m", help="comma-separated, e.g. 1m,1h")
        parser.add_argument(
            "--since", required=True, help="ISO date or time, UTC (2024-03-01, 2024-03-01T12:00)"
        )
        parser.add_argument("--until", help="ISO date or time, UTC (default: the newest closed candle)")
        parser.add_argument(
            "--dry-run", action="store_true", help="report what would be written; write nothing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            profile = exchange_profile(options["exchange"], overrides=settings.OASIS_EXCHANGE_URLS)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        timeframes = timeframes_option(profile, options["timeframes"], refusal=NOT_SERVED)
        symbols = list(symbols_option(profile, options["symbols"]))
        since = _moment(options["since"], "--since")
        until = None if options["until"] is None else _moment(options["until"], "--until")
        if until is not None and until < since:
            raise CommandError(f"--since {since.isoformat()} is after --until {until.isoformat()}")
        actor = _actor()
        for symbol in symbols:
            for timeframe in timeframes:
                bar = _ProgressBar(self.stderr, f"{symbol} {timeframe}") if self.stderr.isatty() else None
                try:
                    result = backfill_range(
                        exchange=profile.name,
                        symbol=symbol,
                        timeframe=timeframe,
                        since=since,
                        until=until,
                        actor=actor,
                        dry_run=options["dry_run"],
                        progress=bar,
                    )
                except BackfillInputError as exc:
                    raise CommandError(str(exc)) from None
                except BackfillFailed as exc:
                    if exc.result is not None:
                        self.stdout.write(_summary(exc.result))
                    raise CommandError(f"{symbol} {timeframe}: {exc.reason}") from None
                finally:
                    if bar is not None:
                        bar.end()
                self.stdout.write(_summary(result))


def _moment(text: str, flag: str) -> datetime:
    """An ISO date or date-time; UTC unless it names another offset."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(
            f"{flag} {text!r} is not an ISO date or time (2024-03-01, 2024-03-01T12:00, 2024-03-01T12:00Z)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _actor() -> str:
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):
        return "system:backfill"


def _summary(result: BackfillResult) -> str:
    since, until = _iso(result.since_ms), _iso(result.until_ms)
    verb = "would write" if result.dry_run else "wrote"
    line = (
        f"{result.exchange} {result.symbol} {result.timeframe} {since} … {until}: {result.missing} missing "
        f"in {len(result.ranges)} range(s); {verb} {result.backfilled} fetched + {result.imputed} imputed"
    )
    if result.unimputable:
        line += f"; {result.unimputable} left missing ({result.reason})"
    if not result.dry_run:
        line += f"; {result.derived} derived"
    return line + f" ({result.requests} requests)"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")


class _ProgressBar:
    """Candles done / total and the rate, redrawn in place on a terminal."""

    def __init__(self, stream: OutputWrapper, label: str) -> None:
        self.stream = stream
        self.label = label
        self.started = time.monotonic()
        self.drawn = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.drawn < 0.1 and done < total:
            return
        self.drawn = now
        width = 30
        filled = width * done // total if total else width
        rate = done / max(now - self.started, 1e-6)
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{done:,}/{total:,} candles {rate:,.0f}/s",
            ending="",
        )
        self.stream.flush()

    def end(self) -> None:
        if self.drawn:
            self.stream.write("")
            self.stream.flush()
