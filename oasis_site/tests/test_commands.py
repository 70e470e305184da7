"""Site-wide management commands."""

import dataclasses

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_ensure_dev_admin_refuses_outside_dev(settings):
    settings.OASIS_ENV = "prod"
    with pytest.raises(CommandError, match=r"only runs with OASIS_ENV=dev \(this is prod\)"):
        call_command("ensure_dev_admin")
    assert not get_user_model().objects.exists()


def test_ensure_dev_admin_creates_once_and_keeps_the_password(settings, tmp_path, capsys):
    settings.OASIS_ENV = "dev"
    settings.ENV = dataclasses.replace(settings.ENV, var_dir=tmp_path)
    call_command("ensure_dev_admin")
    first = capsys.readouterr().out
    call_command("ensure_dev_admin")
    second = capsys.readouterr().out
    assert first == second
    password = (tmp_path / "dev-admin-password").read_text().strip()
    assert f"user=admin  password={password}" in first
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser
    assert admin.check_password(password)
    assert list(AuditEvent.objects.values_list("action", flat=True)) == ["auth.dev_admin_created"]

    admin.set_password("changed-by-someone")
    admin.save()
    call_command("ensure_dev_admin")
    admin.refresh_from_db()
    assert admin.check_password(password)
    assert AuditEvent.objects.filter(action="auth.dev_admin_password_reset").count() == 1
