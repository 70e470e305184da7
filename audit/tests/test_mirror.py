"""The MongoDB mirror, against a MongoDB wire-protocol server on loopback (nx-27017, file
backed so that a restart keeps what it stored): with the server down for a while, events keep
being recorded; when it is back they arrive in order, none lost, none duplicated. Rule
versions are mirrored too (rules/tests/test_mirror_rules.py), and index migrations apply once."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command
from pymongo import MongoClient

from audit.mirror import mirror_ship
from audit.models import AuditEvent, MirrorOutbox
from audit.services import audit_record

pytestmark = pytest.mark.django_db


def mirrored(server: Any, collection: str) -> list[dict[str, Any]]:
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


def test_index_migrations_apply_once(mongo, capsys):
    call_command("mongo_migrate")
    call_command("mongo_migrate")
    out = capsys.readouterr().out
    assert "applied 1, 2; at version 2" in out
    assert "nothing to apply; at version 2" in out


def test_without_mongo_url_nothing_is_queued(settings):
    settings.MONGO_URL = None
    record(0)
    assert not MirrorOutbox.objects.exists()
