from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from oasis_site.backups import BackupError, backup_create


class Command(BaseCommand):
    help = (
        "Back up the configured database to a new file, with a manifest (checksum, migrations, audit head)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("output", type=Path, help="the dump file to create (refused if it exists)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = backup_create(output=options["output"])
        except BackupError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            f"backup written: {result.dump} ({result.size} bytes, {result.audit_events} audit events); "
            f"manifest {result.manifest}"
        )
