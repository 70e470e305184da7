from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from pymongo.errors import PyMongoError

from audit.mirror import MONGO_MIGRATIONS, mongo_migrate


class Command(BaseCommand):
    help = "Apply the MongoDB mirror's versioned index migrations not yet applied (needs MONGO_URL)."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.MONGO_URL:
            raise CommandError("MONGO_URL is not set: there is no MongoDB mirror to migrate")
        try:
            applied = mongo_migrate()
        except PyMongoError as error:
            raise CommandError(f"MongoDB: {error}") from None
        latest = MONGO_MIGRATIONS[-1][0]
        if applied:
            self.stdout.write(f"applied {', '.join(map(str, applied))}; at version {latest}")
        else:
            self.stdout.write(f"nothing to apply; at version {latest}")
