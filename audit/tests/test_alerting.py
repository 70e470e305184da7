"""Alerts, incidents and their notifications: deduplication and cooldown, incidents opened by
critical alerts and closed only with a post-mortem, every step audited; notifications sent to
a real webhook receiver and a real SMTP server on loopback, retried with backoff when the
endpoint is down, slow or answers garbage, never blocking the caller."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from audit.alerting import (
    IncidentError,
    alert_raise,
    alert_resolve,
    alerts_expire,
    incident_action_add,
    incident_close,
    incident_open,
)
from audit.models import Alert, AuditEvent, Incident, Notification
from audit.monitors import ServiceLevelMonitor
from audit.notifications import MAX_ATTEMPTS, notifications_dispatch
from audit.selectors import actions_overdue, audit_chain_verify, incident_timeline
from audit.services import audit_record
from audit.tests.receivers import SmtpReceiver, WebhookReceiver
from oasis_site.tests.stack_harness import free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def webhook(settings: Any) -> Any:
    with WebhookReceiver() as receiver:
        settings.OASIS_SLACK_WEBHOOK_URL = receiver.url
        yield receiver


@pytest.fixture
def smtp(settings: Any) -> Any:
    with SmtpReceiver() as receiver:
        settings.OASIS_ALERT_EMAIL_TO = ("desk@example.com",)
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST = "127.0.0.1"
        settings.EMAIL_PORT = receiver.port
        settings.EMAIL_TIMEOUT = 2
        yield receiver


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_recurring_alert_is_one_row_notified_once_until_its_cooldown(webhook, smtp):
    now = timezone.now()
    first = alert_raise(key="slo.ingest_p95.1m", severity="warning", title="slow", now=now, cooldown_s=600)
    for minutes in (1, 2, 3):
        again = alert_raise(
            key="slo.ingest_p95.1m", severity="warning", title="slow", now=now + timedelta(minutes=minutes)
        )
        assert again.pk == first.pk
    assert notifications_dispatch() == 2  # one webhook, one e-mail
    assert len(webhook.received) == 1
    assert len(smtp.messages) == 1
    assert "FIRING: slow" in webhook.received[0]["text"]
    assert smtp.messages[0]["to"] == ["desk@example.com"]
    alert = Alert.objects.get()
    assert (alert.count, alert.state) == (4, "firing")

    # After the cooldown, a recurrence reminds once.
    alert_raise(key="slo.ingest_p95.1m", severity="warning", title="slow", now=now + timedelta(minutes=11))
    assert notifications_dispatch(now=now + timedelta(minutes=11)) == 2
    assert "STILL FIRING" in webhook.received[1]["text"]

    resolved = alert_resolve(key="slo.ingest_p95.1m", now=now + timedelta(minutes=12))
    assert resolved is not None
    assert resolved.state == "resolved"
    assert notifications_dispatch(now=now + timedelta(minutes=12)) == 2
    assert "RESOLVED" in webhook.received[2]["text"]
    assert alert_resolve(key="slo.ingest_p95.1m") is None  # nothing fires any more
    # The same condition later is a new alert.
    assert alert_raise(key="slo.ingest_p95.1m", severity="warning", title="slow").pk != first.pk
    assert actions() == ["alert.raised", "alert.resolved", "alert.raised"]
    assert audit_chain_verify().intact


def test_a_critical_alert_opens_an_incident_that_gathers_what_fires(webhook):
    gap = alert_raise(key="marketdata.gaps_open", severity="warning", title="gaps")
    assert gap.incident is None
    first = alert_raise(key="slo.ingest_p95.1m", severity="critical", title="ingest slow")
    second = alert_raise(key="killswitch", severity="critical", title="Kill switch HALTED")
    incident = Incident.objects.get()
    assert first.incident == second.incident == incident
    assert incident.severity == "critical"
    # A warning that escalates to critical joins it too.
    escalated = alert_raise(key="marketdata.gaps_open", severity="critical", title="gaps")
    assert escalated.incident == incident
    assert escalated.severity == "critical"
    timeline = [entry.text for entry in incident_timeline(incident)]
    assert any("ingest slow" in text for text in timeline)
    assert any("incident.opened" in text for text in timeline)


def test_an_incident_closes_only_with_root_cause_impact_and_a_corrective_action():
    incident = incident_open(title="exchange outage", severity="critical", actor="cli:ops")
    with pytest.raises(
        IncidentError, match="without a root cause, the impact, at least one corrective action"
    ):
        incident_close(incident=incident, root_cause="", impact="", actor="cli:ops")
    with pytest.raises(IncidentError, match="at least one corrective action"):
        incident_close(
            incident=incident, root_cause="exchange down", impact="20 min no data", actor="cli:ops"
        )
    incident.refresh_from_db()
    assert incident.state == "open"
    yesterday = timezone.now().date() - timedelta(days=1)
    action = incident_action_add(
        incident=incident,
        description="fail over to REST polling",
        owner="ops",
        due_date=yesterday,
        actor="cli:ops",
    )
    assert actions_overdue(today=timezone.now().date()) == [action]
    closed = incident_close(
        incident=incident, root_cause="exchange down", impact="20 min no data", actor="cli:ops"
    )
    assert closed.state == "closed"
    assert closed.closed_by == "cli:ops"
    with pytest.raises(IncidentError, match="already closed"):
        incident_close(incident=incident, root_cause="x", impact="y", actor="cli:ops")
    assert actions() == ["incident.opened", "incident.action_added", "incident.closed"]


def test_the_database_refuses_a_closed_incident_without_a_post_mortem():
    from django.db import IntegrityError, transaction

    incident = incident_open(title="t", severity="warning", actor="cli:ops")
    with pytest.raises(IntegrityError), transaction.atomic():
        Incident.objects.filter(pk=incident.pk).update(state="closed", closed_at=timezone.now())


def test_a_down_slow_or_garbage_endpoint_is_retried_with_backoff_and_never_blocks(webhook, settings):
    settings.OASIS_ALERT_EMAIL_TO = ()
    before = sample("oasis_alert_notifications_total", {"channel": "slack", "outcome": "retry"})
    webhook.answer = lambda: (200, b"<html>proxy error</html>", 0.0)
    alert_raise(key="k", severity="warning", title="t")
    assert notifications_dispatch() == 0
    row = Notification.objects.get()
    assert (row.status, row.attempts) == ("pending", 1)
    assert "not 'ok'" in row.last_error
    assert row.next_attempt_at > timezone.now() + timedelta(seconds=5)
    assert notifications_dispatch() == 0  # not due yet: nothing sent, nothing attempted
    assert Notification.objects.get().attempts == 1

    webhook.answer = lambda: (503, b"busy", 0.0)
    Notification.objects.update(next_attempt_at=timezone.now())
    notifications_dispatch()
    row = Notification.objects.get()
    assert row.attempts == 2
    assert "503" in row.last_error
    assert row.next_attempt_at > timezone.now() + timedelta(seconds=15)  # the wait doubled

    webhook.answer = lambda: (200, b"ok", 10.0)  # slower than the send timeout
    Notification.objects.update(next_attempt_at=timezone.now())
    started = time.monotonic()
    notifications_dispatch()
    assert time.monotonic() - started < 9
    assert Notification.objects.get().attempts == 3

    webhook.answer = lambda: (200, b"ok", 0.0)
    Notification.objects.update(next_attempt_at=timezone.now())
    assert notifications_dispatch() == 1
    assert Notification.objects.get().status == "sent"
    assert sample("oasis_alert_notifications_total", {"channel": "slack", "outcome": "retry"}) == before + 3


def test_an_unreachable_endpoint_fails_after_the_last_attempt(settings):
    settings.OASIS_SLACK_WEBHOOK_URL = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens
    settings.OASIS_ALERT_EMAIL_TO = ()
    alert_raise(key="k", severity="warning", title="t")
    for _ in range(MAX_ATTEMPTS):
        Notification.objects.update(next_attempt_at=timezone.now())
        notifications_dispatch()
    row = Notification.objects.get()
    assert (row.status, row.attempts) == ("failed", MAX_ATTEMPTS)
    assert "unreachable" in row.last_error


def test_without_channels_configured_nothing_is_queued(settings):
    settings.OASIS_SLACK_WEBHOOK_URL = None
    settings.OASIS_ALERT_EMAIL_TO = ()
    alert_raise(key="k", severity="critical", title="t")
    assert not Notification.objects.exists()


def test_event_alerts_resolve_after_an_hour_of_quiet_but_the_kill_switch_does_not():
    audit_record(
        actor="system:execution", action="trading.order.rejected", payload={"reason": "min_notional"}
    )
    audit_record(actor="cli:ops", action="trading.killswitch", payload={"to": "halted", "reason": "drill"})
    assert alerts_expire(now=timezone.now() + timedelta(minutes=30)) == 0
    assert alerts_expire(now=timezone.now() + timedelta(hours=2)) == 1
    states = dict(Alert.objects.values_list("key", "state"))
    assert states == {"trading.order.rejected": "resolved", "killswitch": "firing"}
    audit_record(actor="cli:ops", action="trading.killswitch", payload={"to": "active", "reason": "over"})
    assert Alert.objects.get(key="killswitch").state == "resolved"


def test_the_service_level_monitor_raises_over_the_threshold_and_resolves_below_it():
    clock = [1000.0]
    monitor = ServiceLevelMonitor(
        key="slo.test",
        title="WS → persisted",
        threshold_ms=300,
        window_s=60,
        min_samples=5,
        clock=lambda: clock[0],
    )
    for _ in range(20):
        monitor.add("1m", 900.0, at=clock[0])
    monitor.check()
    assert not Alert.objects.exists()  # the first window after a start is catch-up: not judged
    clock[0] += 61
    for index in range(4):
        monitor.add("1m", 900.0, at=clock[0] - index)
    monitor.check()
    assert not Alert.objects.exists()  # too few samples to judge
    for index in range(20):
        monitor.add("1m", 40.0 if index < 10 else 800.0, at=clock[0])
    monitor.check()
    alert = Alert.objects.get()
    assert (alert.key, alert.severity, alert.state) == ("slo.test.1m", "critical", "firing")
    assert alert.payload["samples"] == 24
    clock[0] += 61  # the slow samples leave the window
    for _ in range(10):
        monitor.add("1m", 20.0)
    monitor.check()
    alert.refresh_from_db()
    assert alert.state == "resolved"
