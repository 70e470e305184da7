import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from audit.services import audit_record

USERNAME = "admin"


class Command(BaseCommand):
    help = (
        "Dev only: make sure a superuser 'admin' exists and print its credentials. The "
        "password is kept in var/dev-admin-password so it stays the same across runs."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.OASIS_ENV != "dev":
            raise CommandError(
                f"ensure_dev_admin only runs with OASIS_ENV=dev (this is {settings.OASIS_ENV})"
            )
        password_file = settings.ENV.var_dir / "dev-admin-password"
        password_file.parent.mkdir(parents=True, exist_ok=True)
        if password_file.exists():
            password = password_file.read_text().strip()
        else:
            password = secrets.token_urlsafe(12)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)

        user_model = get_user_model()
        user = user_model.objects.filter(username=USERNAME).first()
        if user is None:
            user = user_model.objects.create_superuser(username=USERNAME, email="", password=password)
            audit_record(actor="system:make-run", action="auth.dev_admin_created", obj=user, payload={})
        elif not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
            audit_record(
                actor="system:make-run", action="auth.dev_admin_password_reset", obj=user, payload={}
            )
        self.stdout.write(
            f"Dev admin: http://{settings.OASIS_BIND}:{settings.OASIS_PORT}/admin/  "
            f"user={USERNAME}  password={password}"
        )
