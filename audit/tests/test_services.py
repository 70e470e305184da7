"""audit_record and the append-only model, on whichever database the suite runs on."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from audit.chain import GENESIS_HASH, EventContent, PayloadError, event_hash
from audit.models import AuditEvent, AuditImmutableError
from audit.selectors import audit_chain_verify
from audit.services import audit_record
from audit.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def record(n: int) -> list[AuditEvent]:
    return [audit_record(actor="system:test", action="test.event", payload={"n": i}) for i in range(n)]


def test_events_form_a_chain():
    first, second, third = record(3)
    assert [first.seq, second.seq, third.seq] == [1, 2, 3]
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert third.prev_hash == second.hash
    assert len({first.hash, second.hash, third.hash}) == 3
    result = audit_chain_verify()
    assert result.intact
    assert (result.checked, result.head_seq, result.head_hash) == (3, 3, third.hash)


def test_actor_and_object_are_named():
    user = UserFactory.create(username="alice")
    event = audit_record(actor=user, action="auth.login", obj=user, payload={"ip": "127.0.0.1"})
    event.refresh_from_db()
    assert event.actor == "user:alice"
    assert event.object_type == "auth.user"
    assert event.object_id == str(user.pk)
    assert event.payload == {"ip": "127.0.0.1"}
    assert event.created_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"payload": {"price": Decimal("1.1")}}, PayloadError, "payload.price is of type Decimal"),
        ({"payload": ["not", "a", "dict"]}, PayloadError, "payload must be a JSON object"),
        ({"actor": ""}, ValueError, "actor must be a user or a non-empty string"),
        ({"action": " "}, ValueError, "action must be a non-empty string"),
    ],
)
def test_bad_input_writes_nothing(kwargs, error, fragment):
    record(1)
    arguments = {"actor": "system:test", "action": "test.event", "payload": {}, **kwargs}
    with pytest.raises(error) as excinfo:
        audit_record(**arguments)
    assert fragment in str(excinfo.value)
    assert AuditEvent.objects.count() == 1
    assert audit_chain_verify().intact


def test_unsaved_object_is_refused():
    user = UserFactory.build(username="ghost")
    with pytest.raises(ValueError, match="must be saved before it is audited"):
        audit_record(actor="system:test", action="test.event", obj=user, payload={})
    assert AuditEvent.objects.count() == 0


def test_event_rolls_back_with_the_callers_transaction():
    record(1)

    def failing_state_change() -> None:
        with transaction.atomic():
            audit_record(actor="system:test", action="test.doomed", payload={})
            raise RuntimeError("the state change failed")

    with pytest.raises(RuntimeError):
        failing_state_change()
    assert list(AuditEvent.objects.values_list("action", flat=True)) == ["test.event"]
    assert audit_record(actor="system:test", action="test.next", payload={}).seq == 2
    assert audit_chain_verify().intact


def test_model_refuses_update_and_delete_everywhere():
    [event] = record(1)
    event.action = "test.rewritten"
    with pytest.raises(AuditImmutableError, match="update is refused"):
        event.save()
    with pytest.raises(AuditImmutableError, match="delete is refused"):
        event.delete()
    with pytest.raises(AuditImmutableError, match="update is refused"):
        AuditEvent.objects.filter(pk=event.pk).update(action="x")
    with pytest.raises(AuditImmutableError, match="delete is refused"):
        AuditEvent.objects.all().delete()
    with pytest.raises(AuditImmutableError, match="bulk_update is refused"):
        AuditEvent.objects.bulk_update([event], ["action"])
    with pytest.raises(AuditImmutableError, match="bulk_create"):
        AuditEvent.objects.bulk_create([AuditEvent(seq=9, actor="x", action="y")])
    event.refresh_from_db()
    assert event.action == "test.event"


def raw_update(sql: str, params: list[str | int]) -> None:
    """Tamper as someone with direct database access would (triggers off on PostgreSQL)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only")
        cursor.execute(sql, params)
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_append_only")


def test_verify_command_reports_intact_chain(capsys):
    record(5)
    call_command("audit_verify")
    assert "audit chain intact: 5 events, head seq=5" in capsys.readouterr().out


def test_verify_names_a_tampered_payload():
    events = record(5)
    raw_update("UPDATE audit_auditevent SET payload = %s WHERE id = %s", ['{"n": 99}', events[2].pk])
    with pytest.raises(CommandError) as excinfo:
        call_command("audit_verify")
    assert str(excinfo.value) == (
        f"audit chain broken at event id={events[2].pk} seq=3: stored hash does not match the "
        "event's contents (2 events before it are intact)"
    )


def test_verify_names_a_removed_event():
    events = record(4)
    raw_update("DELETE FROM audit_auditevent WHERE id = %s", [events[1].pk])
    with pytest.raises(CommandError, match=rf"event id={events[2].pk} seq=3: sequence jumps from 1 to 3"):
        call_command("audit_verify")


def test_verify_names_a_rehashed_event_by_its_successor():
    # A forger who rewrites an event and recomputes its hash still breaks the next link.
    events = record(3)
    forged = EventContent(
        seq=1,
        created_at=events[0].created_at,
        actor=events[0].actor,
        action=events[0].action,
        object_type="",
        object_id="",
        payload={"n": 1000},
        prev_hash=GENESIS_HASH,
    )
    raw_update(
        "UPDATE audit_auditevent SET payload = %s, hash = %s WHERE id = %s",
        ['{"n": 1000}', event_hash(forged), events[0].pk],
    )
    result = audit_chain_verify()
    assert (result.broken_event_id, result.broken_seq) == (events[1].pk, 2)
    assert result.problem == "prev_hash does not match the previous event's hash"


def test_admin_is_read_only_with_filters_and_search(admin_client):
    record(3)
    audit_record(actor="user:bob", action="rules.activate", payload={"version": 4})
    listing = admin_client.get("/admin/audit/auditevent/", {"q": "rules.activate"})
    assert listing.status_code == 200
    assert listing.context["cl"].result_count == 1
    filtered = admin_client.get("/admin/audit/auditevent/", {"action": "test.event"})
    assert filtered.context["cl"].result_count == 3
    event = AuditEvent.objects.get(seq=4)
    detail = admin_client.get(f"/admin/audit/auditevent/{event.pk}/change/")
    assert detail.status_code == 200
    assert b"Save" not in detail.content
    assert admin_client.get("/admin/audit/auditevent/add/").status_code == 403
    assert admin_client.post(f"/admin/audit/auditevent/{event.pk}/delete/").status_code == 403
    assert AuditEvent.objects.count() == 4
