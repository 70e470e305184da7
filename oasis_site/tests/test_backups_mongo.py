"""The MongoDB audit mirror backed up and restored through the real commands: events and rule
versions mirrored to one wire server, `backup --mongo`, `restore --mongo` into a fresh one,
`audit_verify --mongo` passes there with the same head as PostgreSQL's chain; a non-empty
target, a damaged dump and a tampered mirror are refused, naming what is wrong."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from audit.mirror import mirror_ship
from audit.selectors import audit_chain_verify
from audit.services import audit_record
from audit.tests.mongo_server import WireServer
from marketdata.tests.factories import SymbolFactory
from rules.services import rule_config_create

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SPEC: dict[str, Any] = {
    "timeframes": ["1m"],
    "entry": "close > open",
    "exit": "close < open",
    "sizing": {"quote_amount": "100"},
    "limits": {"max_position_per_symbol": "1000", "max_position_total": "5000"},
}


def manage(*args: str, mongo_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """A command in a subprocess on the mirror at `mongo_url` (the relational database is not
    read by the --mongo commands: a scratch SQLite file stands in)."""
    env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "DATABASE_URL"}}
    env.update(OASIS_ENV="test", MONGO_URL=mongo_url, DATABASE_URL=f"sqlite:///{tmp_path}/unused.sqlite3")
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def url_of(server: WireServer) -> str:
    return f"mongodb://127.0.0.1:{server.port}/oasis_test"


def seed_mirror() -> None:
    SymbolFactory.create(symbol="BTCUSDT", base="BTC")
    for index in range(30):
        audit_record(actor="cli:ops", action="ops.note", payload={"index": index, "price": "1.10"})
    rule_config_create(name="mirrored", description="", symbols=["BTCUSDT"], spec=SPEC, author="system:test")
    while mirror_ship().pending:
        pass


def test_mongo_backup_restore_then_audit_verify(mongo, tmp_path):
    seed_mirror()
    source = url_of(mongo)
    dump = tmp_path / "mirror.jsonl.gz"
    result = manage("backup", "--mongo", str(dump), mongo_url=source, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "mirror.jsonl.gz.manifest.json").read_text())
    head = audit_chain_verify()
    assert manifest["kind"] == "mongodb"
    assert manifest["collections"]["audit_events"] == head.checked
    assert manifest["collections"]["rule_versions"] == 1
    assert manifest["audit_head"] == {"seq": head.head_seq, "hash": head.head_hash}

    fresh = WireServer(tmp_path / "fresh")
    (tmp_path / "fresh").mkdir()
    fresh.start()
    try:
        target = url_of(fresh)
        result = manage("restore", "--mongo", str(dump), mongo_url=target, tmp_path=tmp_path)
        assert result.returncode == 0, result.stderr
        verify = manage("audit_verify", "--mongo", mongo_url=target, tmp_path=tmp_path)
        assert verify.returncode == 0, verify.stderr
        assert f"{head.checked} events" in verify.stdout
        assert str(head.head_hash) in verify.stdout
        client: MongoClient[dict[str, Any]] = MongoClient(target)
        try:
            database = client["oasis_test"]
            assert database["rule_versions"].count_documents({}) == 1
            assert {int(row["_id"]) for row in database["oasis_migrations"].find({})} == {1, 2}
        finally:
            client.close()

        again = manage("restore", "--mongo", str(dump), mongo_url=target, tmp_path=tmp_path)
        assert again.returncode != 0
        assert "not empty" in again.stderr
    finally:
        fresh.stop()

    # A damaged dump is refused before anything is written.
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    damaged = manage("restore", "--mongo", str(dump), mongo_url=url_of(mongo), tmp_path=tmp_path)
    assert damaged.returncode != 0
    assert "does not match its manifest's sha256" in damaged.stderr


def test_a_tampered_mirror_is_named_and_not_backed_up(mongo, tmp_path):
    seed_mirror()
    client: MongoClient[dict[str, Any]] = MongoClient(url_of(mongo))
    try:
        client["oasis_test"]["audit_events"].update_one({"_id": "7"}, {"$set": {"actor": "cli:intruder"}})
    finally:
        client.close()
    verify = manage("audit_verify", "--mongo", mongo_url=url_of(mongo), tmp_path=tmp_path)
    assert verify.returncode != 0
    assert "seq 7: its contents do not match its hash" in verify.stderr
    refused = manage(
        "backup", "--mongo", str(tmp_path / "bad.jsonl.gz"), mongo_url=url_of(mongo), tmp_path=tmp_path
    )
    assert refused.returncode != 0
    assert "broken" in refused.stderr
    assert not (tmp_path / "bad.jsonl.gz").exists()


def test_without_mongo_url_the_mongo_commands_say_so(settings, tmp_path):
    from django.core.management import CommandError, call_command

    settings.MONGO_URL = None
    for args in (
        ("backup", "--mongo", str(tmp_path / "m.jsonl.gz")),
        ("restore", "--mongo", str(tmp_path / "m.jsonl.gz")),
        ("audit_verify", "--mongo"),
    ):
        with pytest.raises(CommandError, match="MONGO_URL is not set"):
            call_command(*args)
    assert not (tmp_path / "m.jsonl.gz").exists()


def test_a_database_dump_is_not_restored_as_a_mirror(mongo, tmp_path):
    dump = tmp_path / "oasis.sqlite.dump"
    dump.write_bytes(b"not a mirror")
    (tmp_path / "oasis.sqlite.dump.manifest.json").write_text(
        json.dumps({"format": 1, "kind": "sqlite", "sha256": hashlib.sha256(b"not a mirror").hexdigest()})
    )
    refused = manage("restore", "--mongo", str(dump), mongo_url=url_of(mongo), tmp_path=tmp_path)
    assert refused.returncode != 0
    assert "is a sqlite backup: restore it without --mongo" in refused.stderr
