import json
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trading.backtests import BacktestInputError
from trading.drift import drift_check


class Command(BaseCommand):
    help = (
        "Replay a dry-run period through the backtester and compare signals, orders and fills one "
        "by one with what dry-run recorded. Exits 1 when over tolerance."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", required=True, help="ISO time with zone, e.g. 2024-03-01T00:00Z")
        parser.add_argument("--until", required=True, help="ISO time with zone (exclusive)")
        parser.add_argument("--exchange", help="default OASIS_EXCHANGE")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            since = datetime.fromisoformat(options["since"].replace("Z", "+00:00"))
            until = datetime.fromisoformat(options["until"].replace("Z", "+00:00"))
        except ValueError as error:
            raise CommandError(
                f"--since/--until must be ISO times such as 2024-03-01T00:00Z: {error}"
            ) from None
        try:
            report = drift_check(since=since, until=until, exchange=options["exchange"])
        except BacktestInputError as error:
            raise CommandError(str(error)) from None
        if options["json"]:
            self.stdout.write(json.dumps(report.to_json(), indent=2))
        else:
            self.stdout.write(
                f"drift {since.isoformat()} → {until.isoformat()}: {report.signals_compared} signals, "
                f"{report.orders_compared} orders, {report.fills_compared} fills compared; "
                f"{len(report.mismatches)} mismatches"
            )
            for m in report.mismatches[:50]:
                within = " (within the rule's price tolerance)" if m.within_tolerance else ""
                self.stdout.write(f"  {m.kind} {m.symbol} {m.timeframe} {m.time}: {m.detail}{within}")
            for symbol, bps in sorted(report.pnl_bps.items()):
                self.stdout.write(f"  PnL divergence {symbol}: {bps:.2f} bps")
        if report.over_tolerance:
            raise CommandError("drift over tolerance", returncode=1)
