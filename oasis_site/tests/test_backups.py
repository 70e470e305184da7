"""Backup → restore into a fresh database → `audit_verify` passes, on PostgreSQL, through the
real commands in subprocesses; a damaged dump and a non-empty target are refused. The
embedded SQLite default is covered too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.db import connection

from audit.services import audit_record
from marketdata.tests.factories import SymbolFactory

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def database_url(name: str) -> str:
    db = connection.settings_dict
    return (
        f"postgres://{quote(db['USER'], safe='')}:{quote(db['PASSWORD'], safe='')}"
        f"@{db['HOST']}:{db['PORT']}/{quote(name, safe='')}"
    )


def manage(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL"}}
    env.update(OASIS_ENV="test", DATABASE_URL=url)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def fresh_database() -> Iterator[str]:
    name = f"oasis_restore_{uuid.uuid4().hex[:12]}"
    admin = database_url("postgres")
    with psycopg.connect(admin.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(admin.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed() -> None:
    SymbolFactory.create(symbol="BTCUSDT", base="BTC")
    for index in range(25):
        audit_record(actor="cli:ops", action="rules.config.update", payload={"index": index, "price": "1.10"})


@pytest.mark.postgres
def test_backup_restore_into_a_fresh_database_then_audit_verify(tmp_path, fresh_database):
    seed()
    source = database_url(str(connection.settings_dict["NAME"]))
    dump = tmp_path / "oasis.dump"
    result = manage("backup", str(dump), url=source)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "oasis.dump.manifest.json").read_text())
    assert manifest["kind"] == "postgresql"
    assert manifest["audit_events"] == 25
    assert manifest["audit_head"]["seq"] == 25
    assert "audit" in manifest["migrations"]

    target = database_url(fresh_database)
    result = manage("restore", str(dump), url=target)
    assert result.returncode == 0, result.stderr
    assert "audit chain intact" in result.stdout
    verify = manage("audit_verify", url=target)
    assert verify.returncode == 0, verify.stderr
    assert "25 events" in verify.stdout
    with psycopg.connect(target.replace("postgres://", "postgresql://")) as conn:
        assert conn.execute("SELECT symbol FROM marketdata_symbol").fetchall() == [("BTCUSDT",)]

    # Restoring again into the now non-empty database is refused, nothing touched.
    again = manage("restore", str(dump), url=target)
    assert again.returncode != 0
    assert "not empty" in again.stderr

    # A backup never overwrites a file.
    assert "already exists" in manage("backup", str(dump), url=source).stderr


@pytest.mark.postgres
def test_a_damaged_dump_is_refused_before_anything_is_written(tmp_path, fresh_database):
    seed()
    dump = tmp_path / "oasis.dump"
    assert (
        manage("backup", str(dump), url=database_url(str(connection.settings_dict["NAME"]))).returncode == 0
    )
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    result = manage("restore", str(dump), url=database_url(fresh_database))
    assert result.returncode != 0
    assert "does not match its manifest's sha256" in result.stderr
    with psycopg.connect(database_url(fresh_database).replace("postgres://", "postgresql://")) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,)


def test_sqlite_backup_and_restore(tmp_path):
    source = f"sqlite:///{tmp_path}/source.sqlite3"
    assert manage("migrate", "--no-input", url=source).returncode == 0
    shell = (
        "from audit.services import audit_record; "
        "[audit_record(actor='cli:ops', action='x.y', payload={'i': i}) for i in range(5)]"
    )
    assert manage("shell", "-c", shell, url=source).returncode == 0
    dump = tmp_path / "oasis.sqlite.dump"
    result = manage("backup", str(dump), url=source)
    assert result.returncode == 0, result.stderr
    target = f"sqlite:///{tmp_path}/restored.sqlite3"
    result = manage("restore", str(dump), url=target)
    assert result.returncode == 0, result.stderr
    verify = manage("audit_verify", url=target)
    assert verify.returncode == 0, verify.stderr
    assert "5 events" in verify.stdout
