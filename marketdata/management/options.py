"""Options the market-data commands share: timeframes and symbols of one exchange, each refused
with a CommandError that lists the valid values."""

from __future__ import annotations

from django.core.management.base import CommandError

from marketdata.core.timeframes import Timeframe
from marketdata.exchanges import ExchangeProfile
from marketdata.selectors import symbol_ids_by_name


def timeframes_option(profile: ExchangeProfile, text: str, *, refusal: str) -> list[Timeframe]:
    """The comma-separated timeframes in `text`, each one `profile` serves. `refusal` says why
    another is refused (formatted with `exchange` and `name`); the served ones follow it."""
    served = ", ".join(tf.value for tf in Timeframe if tf in profile.streamed_timeframes)
    chosen = []
    for name in (part.strip() for part in text.split(",") if part.strip()):
        try:
            timeframe = Timeframe.parse(name)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if timeframe not in profile.streamed_timeframes:
            raise CommandError(refusal.format(exchange=profile.name, name=name) + served)
        chosen.append(timeframe)
    if not chosen:
        raise CommandError("--timeframes names no timeframe")
    return chosen


def symbols_option(profile: ExchangeProfile, text: str) -> dict[str, int]:
    """{name: id} of the comma-separated symbols in `text`, or of every trading one for "all"."""
    sync = f"run `manage.py sync_symbols --exchange {profile.name}`"
    if text.strip().lower() == "all":
        found = symbol_ids_by_name(exchange=profile.name)
        if not found:
            raise CommandError(f"no {profile.name} symbols are known: {sync}")
        return dict(sorted(found.items()))
    names = [part.strip().upper() for part in text.split(",") if part.strip()]
    found = symbol_ids_by_name(exchange=profile.name, names=names)
    unknown = [name for name in names if name not in found]
    if unknown or not names:
        known = sorted(symbol_ids_by_name(exchange=profile.name))
        listing = ", ".join(known[:20]) + (f" … ({len(known)} in all)" if len(known) > 20 else "")
        raise CommandError(
            f"unknown {profile.name} symbol(s): {', '.join(unknown) or '(none given)'}; "
            f"known: {listing or 'none'} ({sync} to load them)"
        )
    return {name: found[name] for name in names}
