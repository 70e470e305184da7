"""The audit log on PostgreSQL: the database refuses changes, and concurrent writers,
threads and whole processes, never fork the chain."""

import os
import threading
from urllib.parse import quote

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, connections, transaction

from audit.models import AuditEvent
from audit.selectors import audit_chain_verify
from audit.services import audit_record
from audit.tests.writers import start_writer_processes, wait_for_writers

pytestmark = [pytest.mark.postgres]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_auditevent SET action = 'rewritten' WHERE seq = 1",
        "DELETE FROM audit_auditevent WHERE seq = 1",
    ],
)
def test_database_refuses_update_and_delete(sql):
    audit_record(actor="system:test", action="test.event", payload={"n": 1})
    refused = r"audit_auditevent is append-only: (UPDATE|DELETE) of event seq=1"
    with pytest.raises(DatabaseError, match=refused), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)
    assert AuditEvent.objects.get(seq=1).action == "test.event"


@pytest.mark.django_db
def test_jsonb_round_trip_keeps_the_chain_intact():
    payloads: list[dict[str, object]] = [
        {"big": 1e16, "huge": 1.7976931348623157e308, "tiny": 5e-324, "neg": -0.0},
        {"decimalish": 0.1 + 0.2, "int": 10**30, "nested": {"z": [1, 2.5, {"a": None}], "a": True}},
        {"text": "naïve ☃ 𝄞 \u2028", "empty": "", "list": [], "obj": {}},
    ]
    for payload in payloads:
        audit_record(actor="system:test", action="test.numbers", payload=payload)
    result = audit_chain_verify()
    assert result.intact, result.problem
    assert result.checked == 3


def write_events(count: int, label: str, errors: list[BaseException]) -> None:
    try:
        for i in range(count):
            audit_record(actor=f"system:{label}", action="test.concurrent", payload={"i": i})
    except BaseException as exc:  # noqa: BLE001 - the test reports what the writer hit
        errors.append(exc)
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_concurrent_threads_and_processes_do_not_fork_the_chain(capsys):
    db = connection.settings_dict
    url = (
        f"postgres://{quote(db['USER'], safe='')}:{quote(db['PASSWORD'], safe='')}"
        f"@{db['HOST']}:{db['PORT']}/{quote(db['NAME'], safe='')}"
    )
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "OASIS_ENV": "test",
        "DJANGO_SETTINGS_MODULE": "oasis_site.settings",
    }
    processes = start_writer_processes(env=env, processes=3, events_each=40)
    errors: list[BaseException] = []
    threads = [threading.Thread(target=write_events, args=(40, f"thread{n}", errors)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    wait_for_writers(processes)
    assert errors == []

    total = 9 * 40
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == list(range(1, total + 1))
    writers = set(AuditEvent.objects.values_list("actor", flat=True))
    assert writers == {f"system:proc{n}" for n in range(3)} | {f"system:thread{n}" for n in range(6)}
    call_command("audit_verify")
    assert f"audit chain intact: {total} events" in capsys.readouterr().out
