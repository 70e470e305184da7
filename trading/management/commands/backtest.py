import json
import sys
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trading.backtests import BacktestInputError, BacktestRequest, backtest_run


class Command(BaseCommand):
    help = (
        "Replay a rule version over stored candles with the execution loop's own decisions, risk "
        "checks and fill model, and store the run (BacktestRun)."
    )

    def add_base_argument(self, parser: CommandParser, *args: Any, **kwargs: Any) -> None:
        # --version names the rule's version here: Django's own --version is given up for it.
        if "--version" not in args:
            super().add_base_argument(parser, *args, **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rule", required=True, help="the rule's name")
        parser.add_argument("--version", type=int, help="version number (default: the active one)")
        parser.add_argument("--symbols", help="comma-separated (default: the version's)")
        parser.add_argument("--timeframes", help="comma-separated, from the spec's (default: all of them)")
        parser.add_argument("--since", required=True, help="ISO time with zone, e.g. 2024-03-01T00:00Z")
        parser.add_argument("--until", required=True, help="ISO time with zone (exclusive)")
        parser.add_argument("--fee", help="fee in basis points (default OASIS_FEE_BPS)")
        parser.add_argument("--slippage", help="slippage in basis points (default OASIS_SLIPPAGE_BPS)")
        parser.add_argument("--balance", default="10000", help="opening balance in the quote asset")
        parser.add_argument("--exchange", help="default OASIS_EXCHANGE")
        parser.add_argument("--json", action="store_true", help="print the run as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        request = BacktestRequest(
            rule=options["rule"],
            version=options["version"],
            symbols=_names(options["symbols"]),
            timeframes=_names(options["timeframes"]),
            since=_time("--since", options["since"]),
            until=_time("--until", options["until"]),
            fee_bps=_decimal("--fee", options["fee"]),
            slippage_bps=_decimal("--slippage", options["slippage"]),
            opening_balance=_decimal("--balance", options["balance"]) or Decimal(0),
            exchange=options["exchange"],
        )
        progress = _bar if sys.stderr.isatty() and not options["json"] else None
        try:
            run, _result = backtest_run(request=request, actor="cli:backtest", progress=progress)
        except BacktestInputError as error:
            raise CommandError(str(error)) from None
        if progress:
            sys.stderr.write("\n")
        document = {
            "id": run.pk,
            "status": run.status,
            "rule_checksum": run.rule_checksum,
            "parameters": run.parameters,
            "candles": run.candles,
            "imputed_candles": run.imputed_candles,
            "results": run.results,
        }
        if options["json"]:
            self.stdout.write(json.dumps(document, indent=2))
            return
        self.stdout.write(
            f"backtest {run.pk}: {run.status}, {run.candles} candles ({run.imputed_candles} imputed)"
        )
        for key, value in run.results.items():
            self.stdout.write(f"  {key}: {value}")


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise CommandError("an empty list; leave the option out to use the rule's")
    return names


def _time(option: str, text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"{option} {text!r} is not an ISO time such as 2024-03-01T00:00Z") from None


def _decimal(option: str, text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CommandError(f"{option} {text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise CommandError(f"{option} must be a number ≥ 0, got {text!r}")
    return value


def _bar(stage: str, done: int, total: int) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    sys.stderr.write(f"\r{stage:<8} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stderr.flush()
