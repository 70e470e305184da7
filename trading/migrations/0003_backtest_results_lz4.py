"""Backtest results compressed with LZ4 on PostgreSQL, where the server has it.

A year's run stores about 6 MB of JSON (every fill and trade). TOAST compresses it with pglz by
default, which took about a third of the time the row's update takes (0.12 s pglz, 0.09 s LZ4
for a 5.7 MB document here; both shrink it to about 0.7 MB). LZ4 exists from PostgreSQL 14 when
the server is built with it; elsewhere (older servers, builds without it, SQLite) nothing
changes. Only new values are compressed the new way: existing rows stay as they are, readable
by both, so this is an expand step (the previous release reads and writes the column as before).
"""

from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

FORWARD = """
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        ALTER TABLE trading_backtestrun ALTER COLUMN results SET COMPRESSION lz4;
    END IF;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'LZ4 is not available on this server: backtest results stay compressed with pglz';
END
$$;
"""

BACKWARD = """
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        ALTER TABLE trading_backtestrun ALTER COLUMN results SET COMPRESSION default;
    END IF;
END
$$;
"""


def forward(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("trading", "0002_backtest_run")]

    operations = [migrations.RunPython(forward, backward, elidable=False)]
