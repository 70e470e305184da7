"""The MongoDB mirror, against a MongoDB wire-protocol server on loopback (nx-27017, file
backed so that a restart keeps what it stored): with the server down for a while, events keep
being recorded; when it is back they arrive in order, none lost, none duplicated. Rule
versions are mirrored too, and index migrations apply once."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from pymongo import MongoClient

from audit.mirror import mirror_ship
from audit.models import AuditEvent, MirrorOutbox
from audit.services import audit_record
from marketdata.tests.factories import SymbolFactory

pytestmark = pytest.mark.django_db


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WireServer:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        executable = Path(sys.executable).with_name("nx-27017")
        self.process = subprocess.Popen(
            [
                str(executable),
                "--host",
                "127.0.0.1",
                "-p",
                str(self.port),
                "--db",
                str(self.folder / "mirror.db"),
                "--pid-file",
                str(self.folder / "nx.pid"),
                "--log-file",
                str(self.folder / "nx.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise AssertionError("the wire server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def mongo(settings: Any, tmp_path: Path) -> Iterator[WireServer]:
    server = WireServer(tmp_path)
    server.start()
    settings.MONGO_URL = f"mongodb://127.0.0.1:{server.port}/oasis_test"
    try:
        yield server
    finally:
        server.stop()


def mirrored(server: WireServer, collection: str) -> list[dict[str, Any]]:
    client: MongoClient[dict[str, Any]] = MongoClient(
        f"mongodb://127.0.0.1:{server.port}", serverSelectionTimeoutMS=3000
    )
    with client:
        return list(client["oasis_test"][collection].find({}))


def record(index: int) -> AuditEvent:
    return audit_record(
        actor="cli:ops", action="rules.config.update", payload={"index": index, "price": "1.10"}
    )


def test_events_survive_the_mirror_being_down_and_arrive_in_order_once(mongo):
    for index in range(5):
        record(index)
    assert mirror_ship().shipped == 5

    mongo.stop()
    for index in range(5, 12):
        record(index)  # recording never waits for MongoDB
    down = mirror_ship()
    assert (down.shipped, down.pending) == (0, 7)
    assert down.error is not None
    assert AuditEvent.objects.count() == 12

    mongo.start()
    back = mirror_ship()
    assert (back.shipped, back.pending, back.error) == (7, 0, None)
    assert mirror_ship().shipped == 0  # nothing twice

    documents = mirrored(mongo, "audit_events")
    assert [document["seq"] for document in documents] == list(range(1, 13))
    assert len({document["_id"] for document in documents}) == 12
    event = AuditEvent.objects.get(seq=7)
    document = next(d for d in documents if d["seq"] == 7)
    assert (document["hash"], document["prev_hash"], document["payload"]) == (
        event.hash,
        event.prev_hash,
        event.payload,
    )
    assert document["created_at"] == event.created_at.isoformat()


def test_a_row_shipped_twice_is_not_duplicated(mongo):
    record(0)
    assert mirror_ship().shipped == 1
    MirrorOutbox.objects.update(shipped_at=None)  # as if the process died before marking it
    assert mirror_ship().shipped == 1
    assert len(mirrored(mongo, "audit_events")) == 1


def test_rule_versions_are_mirrored_and_migrations_apply_once(mongo, capsys):
    from rules.services import rule_config_create

    SymbolFactory.create(symbol="BTCUSDT", base="BTC")
    spec = {
        "timeframes": ["1m"],
        "indicators": {"fast": {"kind": "ema", "period": 9}, "slow": {"kind": "ema", "period": 21}},
        "entry": "fast crosses_above slow",
        "exit": "fast crosses_below slow",
        "sizing": {"quote_amount": "100"},
        "limits": {"max_position_per_symbol": "500", "max_position_total": "1000"},
    }
    config = rule_config_create(name="ema", description="", symbols=["BTCUSDT"], spec=spec, author="cli:ops")
    mirror_ship()
    [version] = mirrored(mongo, "rule_versions")
    assert (version["_id"], version["rule"], version["number"]) == (f"{config.pk}:1", "ema", 1)
    assert version["spec"]["entry"] == "fast crosses_above slow"

    call_command("mongo_migrate")
    call_command("mongo_migrate")
    out = capsys.readouterr().out
    assert "applied 1, 2; at version 2" in out
    assert "nothing to apply; at version 2" in out


def test_without_mongo_url_nothing_is_queued(settings):
    settings.MONGO_URL = None
    record(0)
    assert not MirrorOutbox.objects.exists()
