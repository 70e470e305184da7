from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trading.core.types import KillSwitchState
from trading.killswitch import KillSwitchError, killswitch_engage, killswitch_release, killswitch_view


class Command(BaseCommand):
    help = (
        "Show, engage or release the kill switch. HALTED: no new orders (cancels still go out); "
        "REDUCING: only orders that reduce a position. Every change is audited."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["status", "engage", "release"])
        parser.add_argument(
            "--state", choices=["halted", "reducing"], default="halted", help="for engage (default halted)"
        )
        parser.add_argument("--reason", default="", help="why (required for engage and release)")
        parser.add_argument("--by", default="", help="who is acting (default: the OS user)")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action != "status":
            actor = f"cli:{options['by'] or _os_user()}"
            try:
                if action == "engage":
                    killswitch_engage(
                        state=KillSwitchState(options["state"]), reason=options["reason"], actor=actor
                    )
                else:
                    killswitch_release(reason=options["reason"], actor=actor)
            except KillSwitchError as error:
                raise CommandError(str(error)) from None
        view = killswitch_view()
        since = f"since {view.since.isoformat()}" if view.since else "(never changed)"
        self.stdout.write(f"kill switch: {view.state.value.upper()} {since}")
        if view.reason:
            self.stdout.write(f"reason: {view.reason}")
        if view.changed_by:
            self.stdout.write(
                f"by: {view.changed_by}" + (f" (tripwire {view.tripwire})" if view.tripwire else "")
            )


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
