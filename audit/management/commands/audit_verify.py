from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.selectors import audit_chain_verify


class Command(BaseCommand):
    help = "Walk the audit log's hash chain; exit non-zero naming the first broken event."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--mongo", action="store_true", help="walk the MongoDB mirror's copy (MONGO_URL) instead"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["mongo"]:
            self._mongo()
            return
        result = audit_chain_verify()
        if not result.intact:
            raise CommandError(
                f"audit chain broken at event id={result.broken_event_id} seq={result.broken_seq}: "
                f"{result.problem} ({result.checked} events before it are intact)"
            )
        if result.checked == 0:
            self.stdout.write("audit chain intact: no events yet")
        else:
            self.stdout.write(
                f"audit chain intact: {result.checked} events, "
                f"head seq={result.head_seq} hash={result.head_hash}"
            )

    def _mongo(self) -> None:
        from pymongo.errors import PyMongoError

        from audit.mirror import mirror_chain_verify, mirror_enabled

        if not mirror_enabled():
            raise CommandError("MONGO_URL is not set: there is no MongoDB mirror to verify")
        try:
            result = mirror_chain_verify()
        except PyMongoError as error:
            raise CommandError(f"MongoDB: {type(error).__name__}: {error}"[:500]) from None
        if not result.intact:
            raise CommandError(
                f"mirrored audit chain broken: {result.problem} "
                f"({result.checked} events before it are intact)"
            )
        if result.checked == 0:
            self.stdout.write("mirrored audit chain intact: no events yet")
        else:
            self.stdout.write(
                f"mirrored audit chain intact: {result.checked} events (seq {result.first_seq} to "
                f"{result.head_seq}), head hash={result.head_hash}"
            )
