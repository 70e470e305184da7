"""Backups of the database, and their restore into a fresh database.

A backup is two files: the dump (PostgreSQL: `pg_dump --format=custom`; SQLite: a consistent
copy through SQLite's online backup API) and a manifest beside it (`<dump>.manifest.json`) with
the dump's sha256, the database kind, the newest migration of every app and the audit chain's
head (seq and hash) at the time of the dump.

A restore checks the manifest's checksum first (a damaged or swapped file is refused before
anything is written), refuses a target database that already holds tables (a restore never
merges into or overwrites data), restores, then checks that the restored audit chain is intact
and ends at the manifest's head. Any failure names what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from pymongo.errors import PyMongoError

from audit.mirror import MirrorVerification
from audit.models import AuditEvent
from audit.selectors import ChainVerification, audit_chain_verify

FORMAT_VERSION = 1


class BackupError(RuntimeError):
    """A backup or restore that cannot be done; the message says why."""


@dataclass(frozen=True)
class BackupResult:
    dump: Path
    manifest: Path
    size: int
    audit_events: int


def manifest_path(dump: Path) -> Path:
    return dump.with_name(dump.name + ".manifest.json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pg_env() -> dict[str, str]:
    settings_dict = connection.settings_dict
    env = dict(os.environ)
    env.update(
        PGHOST=str(settings_dict["HOST"]),
        PGPORT=str(settings_dict["PORT"]),
        PGUSER=str(settings_dict["USER"]),
        PGDATABASE=str(settings_dict["NAME"]),
    )
    if settings_dict.get("PASSWORD"):
        env["PGPASSWORD"] = str(settings_dict["PASSWORD"])  # never on a command line
    return env


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} is not installed (PostgreSQL client tools, e.g. apt-get install postgresql-client)"
        )
    return found


def _latest_migrations() -> dict[str, str]:
    rows = MigrationRecorder(connection).migration_qs.order_by("app", "name").values_list("app", "name")
    latest: dict[str, str] = {}
    for app, name in rows:
        latest[app] = max(latest.get(app, ""), name)
    return latest


def _claim(output: Path) -> None:
    """Refuse an `output` (or its manifest) that exists: a backup never overwrites one."""
    if output.exists() or manifest_path(output).exists():
        raise BackupError(f"{output} already exists: choose a new file (a backup never overwrites one)")
    output.parent.mkdir(parents=True, exist_ok=True)


def _head(verification: ChainVerification | MirrorVerification) -> dict[str, Any] | None:
    """A verified chain's head as manifests record it: {"seq", "hash"}, or None when empty."""
    if not verification.head_seq:
        return None
    return {"seq": verification.head_seq, "hash": verification.head_hash}


def _finish(output: Path, *, kind: str, audit_events: int, **fields: Any) -> BackupResult:
    """Write `output`'s manifest: format, kind, checksum, size, time, the audit event count and
    the kind's own `fields`."""
    manifest = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "sha256": _sha256(output),
        "size": output.stat().st_size,
        "created_at": datetime.now(UTC).isoformat(),
        "audit_events": audit_events,
        **fields,
    }
    manifest_path(output).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return BackupResult(output, manifest_path(output), output.stat().st_size, audit_events)


def backup_create(*, output: Path) -> BackupResult:
    """Dump the configured database to `output` (refused if it exists) and write its manifest."""
    _claim(output)
    head = AuditEvent.objects.order_by("-seq").values("seq", "hash").first()
    events = AuditEvent.objects.count()
    migrations = _latest_migrations()
    partial = output.with_name(output.name + ".partial")
    try:
        if connection.vendor == "postgresql":
            result = subprocess.run(  # noqa: S603 - our own arguments; credentials in the environment
                [_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", f"--file={partial}"],
                env=_pg_env(),
                capture_output=True,
                text=True,
                timeout=3600,
                check=False,
            )
            if result.returncode != 0:
                raise BackupError(f"pg_dump failed: {result.stderr.strip()[:500]}")
            kind = "postgresql"
        elif connection.vendor == "sqlite":
            connection.ensure_connection()
            source = connection.connection
            with sqlite3.connect(partial) as target:
                source.backup(target)
            kind = "sqlite"
        else:
            raise BackupError(f"backups of {connection.vendor} databases are not supported")
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return _finish(output, kind=kind, audit_events=events, audit_head=head, migrations=migrations)


def _read_manifest(dump: Path) -> dict[str, Any]:
    path = manifest_path(dump)
    if not dump.exists():
        raise BackupError(f"{dump} does not exist")
    if not path.exists():
        raise BackupError(f"{path} is missing: a dump is restored only with its manifest")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except ValueError as error:
        raise BackupError(f"{path} is not JSON: {error}") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise BackupError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT_VERSION}")
    if _sha256(dump) != manifest.get("sha256"):
        raise BackupError(
            f"{dump} does not match its manifest's sha256: the file is damaged or not this backup"
        )
    return manifest


def _target_tables() -> list[str]:
    with connection.cursor() as cursor:
        return list(connection.introspection.table_names(cursor))


def backup_restore(*, dump: Path) -> dict[str, Any]:
    """Restore `dump` into the configured database, which must be empty; returns the manifest."""
    manifest = _read_manifest(dump)
    if manifest["kind"] != connection.vendor:
        raise BackupError(f"a {manifest['kind']} backup cannot be restored into {connection.vendor}")
    tables = _target_tables()
    if tables:
        raise BackupError(
            f"the target database is not empty ({len(tables)} tables, e.g. {tables[0]}): "
            "restore into a freshly created database"
        )
    if connection.vendor == "postgresql":
        result = subprocess.run(  # noqa: S603 - our own arguments; credentials in the environment
            [
                _tool("pg_restore"),
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--single-transaction",
                f"--dbname={connection.settings_dict['NAME']}",
                str(dump),
            ],
            env=_pg_env(),
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        if result.returncode != 0:
            raise BackupError(f"pg_restore failed: {result.stderr.strip()[:500]}")
    else:
        connection.ensure_connection()
        with sqlite3.connect(dump) as source:
            source.backup(connection.connection)
    verification = audit_chain_verify()
    if not verification.intact:
        raise BackupError(
            f"restored audit chain is broken at seq {verification.broken_seq}: {verification.problem}"
        )
    head = manifest.get("audit_head")
    restored = _head(verification)
    if restored != head:
        raise BackupError(f"restored audit head {restored} is not the manifest's {head}")
    return manifest


# -- MongoDB (the audit mirror) ------------------------------------------------------------------
#
# The mirror's dump is gzip'd JSON lines, one {"c": collection, "d": document} per document in
# MongoDB's canonical extended JSON (bson.json_util: every BSON type round-trips exactly), with
# the same kind of manifest: sha256, counts per collection, the mirror's audit head. No
# mongodump is needed (pymongo only), so the app image and the tests can run it anywhere.

MONGO_COLLECTIONS = ("audit_events", "rule_versions")


def mongo_backup_create(*, output: Path) -> BackupResult:
    """Dump the MongoDB mirror (MONGO_URL) to `output` (refused if it exists), with a manifest."""
    import gzip

    from bson import json_util

    from audit.mirror import mirror_chain_verify, mirror_client, mirror_database, mirror_enabled

    if not mirror_enabled():
        raise BackupError("MONGO_URL is not set: there is no MongoDB mirror to back up")
    _claim(output)
    partial = output.with_name(output.name + ".partial")
    client = mirror_client()
    counts: dict[str, int] = {}
    try:
        database = mirror_database(client)
        verification = mirror_chain_verify(database)
        if not verification.intact:
            raise BackupError(f"the mirror's audit chain is broken: {verification.problem}")
        with gzip.open(partial, "wt", encoding="utf-8") as sink:
            for name in MONGO_COLLECTIONS:
                counts[name] = 0
                for document in database[name].find({}).sort("_id", 1):
                    record = {"c": name, "d": document}
                    sink.write(json_util.dumps(record, json_options=json_util.CANONICAL_JSON_OPTIONS) + "\n")
                    counts[name] += 1
        migrations = sorted(int(row["_id"]) for row in database["oasis_migrations"].find({}, {"_id": 1}))
        partial.replace(output)
    except (PyMongoError, OSError, ValueError) as error:
        raise BackupError(f"MongoDB backup failed: {type(error).__name__}: {error}"[:600]) from None
    finally:
        client.close()
        partial.unlink(missing_ok=True)
    head = _head(verification)
    return _finish(
        output,
        kind="mongodb",
        audit_events=counts["audit_events"],
        audit_head=head,
        collections=counts,
        mongo_migrations=migrations,
    )


def mongo_backup_restore(*, dump: Path, batch: int = 1000) -> dict[str, Any]:
    """Restore a mirror dump into the MongoDB of MONGO_URL, whose mirror collections must be
    empty; then apply the index migrations and verify counts and the audit chain's head."""
    import gzip

    from bson import json_util

    from audit.mirror import (
        mirror_chain_verify,
        mirror_client,
        mirror_database,
        mirror_enabled,
        mongo_migrate,
    )

    if not mirror_enabled():
        raise BackupError("MONGO_URL is not set: nowhere to restore the mirror into")
    manifest = _read_manifest(dump)
    if manifest["kind"] != "mongodb":
        raise BackupError(f"{dump} is a {manifest['kind']} backup: restore it without --mongo")
    client = mirror_client()
    try:
        database = mirror_database(client)
        occupied = {name: n for name in MONGO_COLLECTIONS if (n := database[name].count_documents({}))}
        if occupied:
            raise BackupError(
                f"the target MongoDB database {database.name!r} is not empty ({occupied}): "
                "restore into a fresh database"
            )
        pending: dict[str, list[Any]] = {name: [] for name in MONGO_COLLECTIONS}
        restored = dict.fromkeys(MONGO_COLLECTIONS, 0)
        with gzip.open(dump, "rt", encoding="utf-8") as source:
            for number, line in enumerate(source, start=1):
                record = json_util.loads(line)
                name = record.get("c")
                if name not in pending:
                    raise BackupError(f"{dump} line {number}: unknown collection {name!r}")
                pending[name].append(record["d"])
                if len(pending[name]) >= batch:
                    database[name].insert_many(pending[name], ordered=True)
                    restored[name] += len(pending[name])
                    pending[name] = []
        for name, documents in pending.items():
            if documents:
                database[name].insert_many(documents, ordered=True)
                restored[name] += len(documents)
        if restored != manifest["collections"]:
            raise BackupError(f"restored {restored} documents, the manifest says {manifest['collections']}")
        verification = mirror_chain_verify(database)
    except (PyMongoError, OSError, ValueError) as error:
        raise BackupError(f"MongoDB restore failed: {type(error).__name__}: {error}"[:600]) from None
    finally:
        client.close()
    mongo_migrate()
    if not verification.intact:
        raise BackupError(f"the restored mirror's audit chain is broken: {verification.problem}")
    head = _head(verification)
    if head != manifest.get("audit_head"):
        raise BackupError(
            f"restored mirror audit head {head} is not the manifest's {manifest.get('audit_head')}"
        )
    return manifest
