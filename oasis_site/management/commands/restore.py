from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from oasis_site.backups import BackupError, backup_restore, mongo_backup_restore


class Command(BaseCommand):
    help = (
        "Restore a backup into the configured database, which must be empty (a new database); "
        "checks the checksum first and the audit chain after. --mongo: a mirror dump into the "
        "MongoDB of MONGO_URL (empty mirror collections), indexes applied, chain checked."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dump", type=Path, help="the dump file (its .manifest.json beside it)")
        parser.add_argument("--mongo", action="store_true", help="restore a MongoDB audit mirror dump")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            restore = mongo_backup_restore if options["mongo"] else backup_restore
            manifest = restore(dump=options["dump"])
        except BackupError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            f"restored {options['dump']} ({manifest['kind']}, taken {manifest['created_at']}): "
            f"audit chain intact, head {manifest['audit_head']}"
        )
