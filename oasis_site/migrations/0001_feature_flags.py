from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

# Frozen copy of the flags at the time of this migration: later flags get their own.
FLAGS = {
    "live_trading": "Send real orders through the live broker. Off: every order is dry-run.",
    "api_auth_required": "Require a logged-in user for the REST API and WebSockets.",
}


def create_flags(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    flag_model = apps.get_model("waffle", "Flag")
    for name, note in FLAGS.items():
        flag_model.objects.get_or_create(name=name, defaults={"everyone": False, "note": note})


class Migration(migrations.Migration):
    dependencies = [("waffle", "0004_update_everyone_nullbooleanfield")]

    operations = [migrations.RunPython(create_flags, migrations.RunPython.noop)]
