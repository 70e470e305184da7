from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.selectors import audit_chain_verify


class Command(BaseCommand):
    help = "Walk the audit log's hash chain; exit non-zero naming the first broken event."

    def handle(self, *args: Any, **options: Any) -> None:
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
