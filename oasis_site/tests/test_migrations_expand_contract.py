"""Migrations stay backward compatible for one release (expand/contract, docs/deploy.md).

During a rolling update the previous release keeps running on the schema the new release's
migrations produced, and a rollback returns to the previous image on that same schema. So a
migration may only *expand*: add tables, nullable columns or columns with a database default,
indexes and constraints the old code satisfies. What would break the previous release —
dropping or renaming a table or column, adding a NOT NULL column the old code does not fill,
raw SQL that drops or renames — is a *contract* step: it ships alone, one release after the
code stopped using what it removes, and its migration says so with a module-level
``CONTRACT = "<why this is safe now: which release stopped using it>"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from django.db import migrations
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations.base import Operation

PROJECT_APPS = ("oasis_site", "marketdata", "rules", "trading", "audit")
_DESTRUCTIVE_SQL = re.compile(
    r"\b(DROP\s+(TABLE|COLUMN|VIEW|INDEX\s+(?!CONCURRENTLY))|RENAME\s+(TO|COLUMN))\b", re.I
)


def breaking(operation: Operation, created_here: set[str]) -> str | None:
    """Why `operation` would break the previous release on the new schema, or None."""
    name = type(operation).__name__
    if isinstance(
        operation,
        migrations.RemoveField
        | migrations.DeleteModel
        | migrations.RenameField
        | migrations.RenameModel
        | migrations.AlterModelTable,
    ):
        return f"{name} removes or renames what the previous release still reads and writes"
    if isinstance(operation, migrations.AddField) and operation.model_name.lower() not in created_here:
        field = operation.field
        # A Python-side `default` fills existing rows once, then the column has no default:
        # only `db_default` keeps the previous release's inserts working.
        if not field.null and not field.many_to_many and not _has_db_default(field):
            return (
                f"AddField {operation.model_name}.{operation.name} is NOT NULL without a database "
                "default: the previous release's inserts would fail (make it nullable or give it db_default)"
            )
    if isinstance(operation, migrations.RunSQL):
        sql = " ".join(str(part) for part in _flatten(operation.sql))
        if _DESTRUCTIVE_SQL.search(sql):
            return f"RunSQL drops or renames: {sql[:120]!r}"
    return None


def _has_db_default(field: object) -> bool:
    from django.db.models.fields import NOT_PROVIDED

    return getattr(field, "db_default", NOT_PROVIDED) is not NOT_PROVIDED


def _flatten(sql: object) -> Iterator[object]:
    if isinstance(sql, list | tuple):
        for part in sql:
            yield from _flatten(part[0] if isinstance(part, tuple) else part)
    else:
        yield sql


def project_migrations() -> list[tuple[str, str, migrations.Migration]]:
    loader = MigrationLoader(None, ignore_no_migrations=True)  # from disk, no database
    return sorted(
        (app, name, migration)
        for (app, name), migration in loader.disk_migrations.items()
        if app in PROJECT_APPS
    )


def test_every_migration_only_expands_unless_it_declares_a_contract_step():
    problems = []
    for app, name, migration in project_migrations():
        module = __import__(migration.__module__, fromlist=["CONTRACT"])
        contract = getattr(module, "CONTRACT", None)
        created_here = {
            op.name.lower() for op in migration.operations if isinstance(op, migrations.CreateModel)
        }
        found = [why for op in migration.operations if (why := breaking(op, created_here))]
        if found and not (isinstance(contract, str) and contract.strip()):
            problems.append(f"{app}.{name}: {'; '.join(found)}")
        if contract is not None and not found:
            problems.append(f"{app}.{name}: declares CONTRACT but only expands (remove the marker)")
    assert not problems, "\n".join(problems)


def test_the_check_catches_what_breaks_the_previous_release():
    from django.db import models

    assert breaking(migrations.RemoveField("candle", "volume"), set())
    assert breaking(migrations.RenameField("candle", "volume", "base_volume"), set())
    assert breaking(migrations.DeleteModel("Gap"), set())
    assert breaking(migrations.AddField("candle", "venue", models.CharField(max_length=8)), set())
    assert breaking(migrations.RunSQL("ALTER TABLE marketdata_candle DROP COLUMN venue"), set())
    # Expanding is fine: nullable, database default, a column of a table created alongside.
    assert (
        breaking(migrations.AddField("candle", "venue", models.CharField(max_length=8, null=True)), set())
        is None
    )
    assert (
        breaking(
            migrations.AddField("candle", "venue", models.CharField(max_length=8, db_default="x")), set()
        )
        is None
    )
    assert breaking(migrations.AddField("fresh", "venue", models.CharField(max_length=8)), {"fresh"}) is None
    assert breaking(migrations.RunSQL("CREATE INDEX CONCURRENTLY x ON y (z)"), set()) is None


@pytest.mark.parametrize("app", PROJECT_APPS)
def test_each_app_has_migrations_to_check(app):
    assert any(found == app for found, _, _ in project_migrations()) or app == "oasis_site"
