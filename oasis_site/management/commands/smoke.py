from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from oasis_site.smoke import SmokeCheck, SmokeFailure


class Command(BaseCommand):
    help = (
        "Post-deploy smoke check of a running stack, in dry-run: market data, resampling, a signal, "
        "an order, an audit event and a dashboard WebSocket update; exits non-zero naming the broken link."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="the stack's web address")
        parser.add_argument("--symbol", default="BTCUSDT", help="an ingested symbol")
        parser.add_argument("--timeout", type=float, default=300.0, help="seconds each link may take")
        parser.add_argument("--token", default=None, help="API token (when api_auth_required is on)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["timeout"] <= 0:
            raise CommandError("--timeout must be positive")
        check = SmokeCheck(
            base_url=options["url"],
            symbol=options["symbol"],
            timeout_s=options["timeout"],
            token=options["token"],
        )
        try:
            passed = check.run()
        except SmokeFailure as failure:
            ok = ", ".join(check.passed) or "nothing"
            raise CommandError(f"smoke check failed at {failure} (passed: {ok})") from None
        self.stdout.write(f"smoke check passed: {' → '.join(passed)}")
