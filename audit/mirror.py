"""The MongoDB mirror of the audit log and of rule versions, through an outbox.

When MONGO_URL is set, `mirror_enqueue` writes an outbox row in the caller's transaction (the
event and its mirror row commit or roll back together), and `mirror_ship` (the beat task
`audit.mirror_ship`, every 10 s) sends pending rows to MongoDB in `id` order. A row is written
with `replace_one(upsert=True)` on its own `_id` (the event's seq, the version's
"<config>:<number>"), so sending it twice never duplicates it; shipping stops at the first
failure, so nothing arrives out of order, and the row is retried next time (MongoDB down
never loses or blocks an event: the outbox waits). Times are ISO strings and flags plain
values, so any MongoDB wire server stores them unchanged.

Indexes are versioned migrations (`manage.py mongo_migrate`), each applied once and recorded in
the `oasis_migrations` collection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog
from django.conf import settings
from django.utils import timezone
from prometheus_client import Counter, Gauge
from pymongo import ASCENDING, MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError

from audit.models import MirrorOutbox

logger = structlog.get_logger(__name__)

COLLECTIONS = {MirrorOutbox.Kind.AUDIT_EVENT: "audit_events", MirrorOutbox.Kind.RULE_VERSION: "rule_versions"}
TIMEOUT_MS = 3000

MIRRORED = Counter("oasis_mongo_mirror_shipped_total", "Documents shipped to the MongoDB mirror.", ["kind"])
MIRROR_FAILURES = Counter("oasis_mongo_mirror_failures_total", "Shipping rounds stopped by a MongoDB error.")
MIRROR_PENDING = Gauge("oasis_mongo_mirror_pending", "Outbox rows not yet shipped, at the last round.")


def mirror_enabled() -> bool:
    return bool(getattr(settings, "MONGO_URL", None))


def mirror_enqueue(*, kind: str, key: str, document: dict[str, Any]) -> MirrorOutbox | None:
    """Queue a document for the mirror in the current transaction (no-op without MONGO_URL)."""
    if not mirror_enabled():
        return None
    return MirrorOutbox.objects.create(kind=kind, key=key, document=document, created_at=timezone.now())


def mirror_database(client: MongoClient[dict[str, Any]]) -> Database[dict[str, Any]]:
    """The mirror's database on `client`: the path of MONGO_URL (default "oasis")."""
    name = urlsplit(str(settings.MONGO_URL)).path.lstrip("/") or "oasis"
    return client[name]


def mirror_client() -> MongoClient[dict[str, Any]]:
    """A client for MONGO_URL with short timeouts (close it after use)."""
    return MongoClient(
        settings.MONGO_URL,
        serverSelectionTimeoutMS=TIMEOUT_MS,
        connectTimeoutMS=TIMEOUT_MS,
        socketTimeoutMS=TIMEOUT_MS,
    )


@dataclass(frozen=True)
class ShipResult:
    shipped: int
    pending: int
    error: str | None


def mirror_ship(*, limit: int = 1000) -> ShipResult:
    """Ship pending rows in order, up to `limit`; stop at the first error."""
    if not mirror_enabled():
        return ShipResult(0, 0, None)
    rows = list(MirrorOutbox.objects.filter(shipped_at__isnull=True).order_by("id")[:limit])
    shipped, error = 0, None
    client = mirror_client()
    try:
        database = mirror_database(client)
        for row in rows:
            try:
                database[COLLECTIONS[MirrorOutbox.Kind(row.kind)]].replace_one(
                    {"_id": row.key}, {**row.document, "_id": row.key}, upsert=True
                )
            except PyMongoError as exc:
                error = f"{type(exc).__name__}: {exc}"[:1000]
                MirrorOutbox.objects.filter(pk=row.pk).update(attempts=row.attempts + 1, last_error=error)
                MIRROR_FAILURES.inc()
                logger.warning("mongo_mirror_failed", outbox=row.pk, error=error)
                break
            MirrorOutbox.objects.filter(pk=row.pk).update(
                shipped_at=timezone.now(), attempts=row.attempts + 1
            )
            MIRRORED.labels(row.kind).inc()
            shipped += 1
    finally:
        client.close()
    pending = MirrorOutbox.objects.filter(shipped_at__isnull=True).count()
    MIRROR_PENDING.set(pending)
    return ShipResult(shipped, pending, error)


# -- index migrations ---------------------------------------------------------------------------

MongoMigration = tuple[int, str, Callable[[Database[dict[str, Any]]], None]]


def _m1(db: Database[dict[str, Any]]) -> None:
    db["audit_events"].create_index([("action", ASCENDING), ("seq", ASCENDING)], name="action_seq")
    db["audit_events"].create_index([("created_at", ASCENDING)], name="created_at")


def _m2(db: Database[dict[str, Any]]) -> None:
    db["rule_versions"].create_index(
        [("config", ASCENDING), ("number", ASCENDING)], name="config_number", unique=True
    )


MONGO_MIGRATIONS: list[MongoMigration] = [
    (1, "audit_events: by action and seq, by time", _m1),
    (2, "rule_versions: one per (config, number)", _m2),
]


def mongo_migrate() -> list[int]:
    """Apply the migrations not yet recorded in `oasis_migrations`; returns those applied."""
    client = mirror_client()
    try:
        database = mirror_database(client)
        done = {int(row["_id"]) for row in database["oasis_migrations"].find({}, {"_id": 1})}
        applied = []
        for version, description, apply in MONGO_MIGRATIONS:
            if version in done:
                continue
            apply(database)
            database["oasis_migrations"].insert_one(
                {"_id": version, "description": description, "applied_at": timezone.now().isoformat()}
            )
            applied.append(version)
        return applied
    finally:
        client.close()


# -- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MirrorVerification:
    checked: int
    first_seq: int | None
    head_seq: int | None
    head_hash: str | None
    problem: str | None = None

    @property
    def intact(self) -> bool:
        return self.problem is None


def mirror_chain_verify(database: Database[dict[str, Any]] | None = None) -> MirrorVerification:
    """Walk the mirrored audit events in seq order, as `audit_verify` walks PostgreSQL's: each
    one's hash recomputed from its contents, each pointing at the one before, no seq skipped.
    (The mirror may start after seq 1 when MONGO_URL was set later; it is checked from there.)"""
    from datetime import datetime

    from audit.chain import EventContent, event_hash

    client = None
    if database is None:
        client = mirror_client()
        database = mirror_database(client)
    try:
        checked, first = 0, None
        head_seq: int | None = None
        head_hash: str | None = None

        def broken(problem: str) -> MirrorVerification:
            return MirrorVerification(checked, first, head_seq, head_hash, problem)

        for doc in database["audit_events"].find({}).sort("seq", ASCENDING):
            seq = int(doc["seq"])
            if first is None:
                first = seq
            elif seq != (head_seq or 0) + 1:
                return broken(f"seq {(head_seq or 0) + 1} is missing before seq {seq}")
            elif doc["prev_hash"] != head_hash:
                return broken(f"seq {seq} does not point at seq {seq - 1}")
            content = EventContent(
                seq=seq,
                created_at=datetime.fromisoformat(str(doc["created_at"])),
                actor=doc["actor"],
                action=doc["action"],
                object_type=doc["object_type"],
                object_id=doc["object_id"],
                payload=doc["payload"],
                prev_hash=doc["prev_hash"],
            )
            if event_hash(content) != doc["hash"]:
                return broken(f"seq {seq}: its contents do not match its hash")
            checked, head_seq, head_hash = checked + 1, seq, str(doc["hash"])
        return MirrorVerification(checked, first, head_seq, head_hash)
    finally:
        if client is not None:
            client.close()
