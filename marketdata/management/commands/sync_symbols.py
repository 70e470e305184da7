from typing import Any

import ccxt
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from marketdata.exchanges import PROFILES, exchange_profile
from marketdata.ingest.rest import ccxt_client
from marketdata.services import symbol_sync
from marketdata.symbol_sync import SymbolInfoError, spec_from_exchange_info


class Command(BaseCommand):
    help = "Load an exchange's markets (exchangeInfo through ccxt) into Symbol, recording filter changes."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--exchange", default=settings.OASIS_EXCHANGE, help=f"one of {', '.join(PROFILES)}"
        )
        parser.add_argument("--symbols", default="", help="comma-separated symbols (default: all)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            profile = exchange_profile(options["exchange"], overrides=settings.OASIS_EXCHANGE_URLS)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        wanted = {name.strip().upper() for name in options["symbols"].split(",") if name.strip()}
        client = ccxt_client(profile, async_client=False)
        try:
            info = client.publicGetExchangeInfo()
        except ccxt.BaseError as exc:
            raise CommandError(
                f"could not load markets from {profile.name} ({profile.rest_url}): {exc}"
            ) from None
        entries = [entry for entry in info.get("symbols", []) if not wanted or entry.get("symbol") in wanted]
        missing = wanted - {entry.get("symbol") for entry in entries}
        if missing:
            raise CommandError(f"{profile.name} has no symbol {', '.join(sorted(missing))}")
        changed = skipped = 0
        for entry in entries:
            try:
                spec = spec_from_exchange_info(profile.name, entry)
            except SymbolInfoError as exc:
                skipped += 1
                self.stderr.write(f"skipped: {exc}")
                continue
            _, did_change = symbol_sync(spec=spec, actor=f"system:sync_symbols:{profile.name}")
            changed += did_change
        self.stdout.write(
            f"{profile.name}: {len(entries)} symbols, {changed} added or changed, {skipped} skipped"
        )
