from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from oasis_site.backups import BackupError, backup_restore


class Command(BaseCommand):
    help = (
        "Restore a backup into the configured database, which must be empty (a new database); "
        "checks the checksum first and the audit chain after."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dump", type=Path, help="the dump file (its .manifest.json beside it)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            manifest = backup_restore(dump=options["dump"])
        except BackupError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            f"restored {options['dump']} ({manifest['kind']}, taken {manifest['created_at']}): "
            f"audit chain intact, head {manifest['audit_head']}"
        )
