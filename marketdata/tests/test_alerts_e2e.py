"""The alerting path end to end, over real sockets, on PostgreSQL: the simulator delays its
stream frames (latency injected), the real `manage.py ingest` process measures WS → persisted
above the 300 ms service level and raises one deduplicated critical alert; the beat's
dispatch delivers it exactly once to a webhook receiver and once to an SMTP server on
loopback; an incident opens; clearing the fault resolves the alert; the incident cannot be
closed without a corrective action."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from audit.alerting import IncidentError, incident_action_add, incident_close
from audit.models import Alert, AuditEvent, Incident
from audit.notifications import notifications_dispatch
from audit.tests.receivers import SmtpReceiver, WebhookReceiver
from marketdata.simulator import SimConfig, SimExchangeThread
from marketdata.tests.ingest_harness import sim_faults, start_ingest, stop_ingest

pytestmark = [pytest.mark.postgres, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

KEY = "slo.ingest_p95.1m"


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout} s:\n{log.read_text()[-4000:]}")


def test_injected_latency_raises_one_alert_notifies_once_opens_an_incident_and_resolves(settings, tmp_path):
    config = SimConfig(port=0, symbols=("BTCUSDT", "ETHUSDT"), seed=11, speed=60, history_minutes=30)
    log = tmp_path / "ingest.log"
    with SimExchangeThread(config) as sim, WebhookReceiver() as webhook, SmtpReceiver() as smtp:
        host, port = sim.address
        settings.OASIS_EXCHANGE_URLS = {"sim": {"rest": f"http://{host}:{port}", "ws": f"ws://{host}:{port}"}}
        call_command("sync_symbols", exchange="sim", verbosity=0)
        # This process dispatches as the beat task does; the ingest process raises.
        settings.OASIS_SLACK_WEBHOOK_URL = webhook.url
        settings.OASIS_ALERT_EMAIL_TO = ("desk@example.com",)
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", smtp.port, 2
        env = {
            "OASIS_SLACK_WEBHOOK_URL": webhook.url,
            "OASIS_ALERT_EMAIL_TO": "desk@example.com",
            "OASIS_SMTP_HOST": "127.0.0.1",
            "OASIS_SMTP_PORT": str(smtp.port),
            "OASIS_SLO_WINDOW_S": "6",
            "OASIS_SLO_CHECK_S": "1",
        }
        sim_faults(sim, {"ws_latency_ms": 700})
        process = start_ingest(sim, "--symbols", "BTCUSDT,ETHUSDT", "--timeframes", "1m", log=log, env=env)
        try:
            # At 60x a 1m candle closes every second; each frame leaves 700 ms late.
            wait_for(
                lambda: Alert.objects.filter(key=KEY, state="firing", count__gte=3).exists(),
                timeout=90,
                what="the latency alert did not fire and recur",
                log=log,
            )
            [alert] = Alert.objects.filter(key=KEY)  # one row, however often it recurred
            assert alert.severity == "critical"
            assert alert.payload["p95_ms"] >= 600
            notifications_dispatch()
            notifications_dispatch()  # nothing more is due for what already fired: deduplicated
            # 700 ms late frames breach both service levels (close → calculated too): each alert
            # reaches each channel exactly once.
            keys = [
                line.split("key ", 1)[1].split(" ", 1)[0]
                for m in webhook.received
                for line in m["text"].splitlines()
                if line.startswith("key ")
            ]
            assert KEY in keys
            assert "slo.post_close_p95.1m" in keys
            assert len(keys) == len(set(keys)), keys
            assert len(smtp.messages) == len(webhook.received)
            assert {message["to"][0] for message in smtp.messages} == {"desk@example.com"}
            ingest_message = next(m["text"] for m in webhook.received if f"key {KEY} " in m["text"])
            assert "FIRING: WS → persisted 1m: p95" in ingest_message

            incident = Incident.objects.get()
            assert incident.state == "open"
            assert (
                alert.incident_id == incident.pk or Alert.objects.get(pk=alert.pk).incident_id == incident.pk
            )

            # Clearing the condition resolves the alert once the slow closes leave the window.
            sim_faults(sim, None)
            wait_for(
                lambda: Alert.objects.get(pk=alert.pk).state == "resolved",
                timeout=60,
                what="the alert did not resolve after the fault was cleared",
                log=log,
            )
        finally:
            stop_ingest(process, log)
        assert Alert.objects.filter(key=KEY).count() == 1
        notifications_dispatch()
        resolved = [
            m["text"] for m in webhook.received if f"key {KEY} " in m["text"] and "RESOLVED" in m["text"]
        ]
        assert len(resolved) == 1

        with pytest.raises(IncidentError, match="at least one corrective action"):
            incident_close(
                incident=incident, root_cause="slow exchange feed", impact="signals late", actor="cli:ops"
            )
        assert Incident.objects.get().state == "open"
        incident_action_add(
            incident=incident,
            description="alert on the exchange's own latency",
            owner="ops",
            due_date=(timezone.now() + timedelta(days=7)).date(),
            actor="cli:ops",
        )
        closed = incident_close(
            incident=incident, root_cause="slow exchange feed", impact="signals late", actor="cli:ops"
        )
        assert closed.state == "closed"
        actions = list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))
        for step in (
            "alert.raised",
            "incident.opened",
            "alert.resolved",
            "incident.action_added",
            "incident.closed",
        ):
            assert step in actions
