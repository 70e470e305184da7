from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from oasis_site.backups import BackupError, backup_create, mongo_backup_create


class Command(BaseCommand):
    help = (
        "Back up the configured database (or, with --mongo, the MongoDB audit mirror of MONGO_URL) "
        "to a new file, with a manifest (checksum, migrations or counts, audit head)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("output", type=Path, help="the dump file to create (refused if it exists)")
        parser.add_argument(
            "--mongo",
            action="store_true",
            help="back up the MongoDB audit mirror instead (gzip'd JSON lines)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            create = mongo_backup_create if options["mongo"] else backup_create
            result = create(output=options["output"])
        except BackupError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            f"backup written: {result.dump} ({result.size} bytes, {result.audit_events} audit events); "
            f"manifest {result.manifest}"
        )
