"""Sending alert notifications (Slack incoming webhook, e-mail) from the outbox, off the
trading path.

An alert change writes `Notification` rows in its own transaction (nothing is lost if a
process dies). After commit their ids go to this process's dispatcher: one daemon thread with
a bounded queue (a full queue is counted; the rows wait for the next sweep). The thread also
sweeps due rows every SWEEP_S, and the Celery beat task `audit.notifications_dispatch` does the
same where workers run. A row is claimed (its next attempt pushed out by a lease) before it is
sent, so two dispatchers never send it twice. Each send has a timeout; a failure is retried
with exponential backoff (10 s doubling, at most an hour) up to MAX_ATTEMPTS, then marked
failed; every outcome is counted (`oasis_alert_notifications_total{channel,outcome}`).
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import structlog
from django.conf import settings
from django.core.mail import send_mail
from django.db import close_old_connections
from django.utils import timezone
from prometheus_client import Counter

from audit.models import Alert, Notification

logger = structlog.get_logger(__name__)

SEND_TIMEOUT_S = 5.0
LEASE = timedelta(seconds=60)
MAX_ATTEMPTS = 10
RETRY_BASE_S = 10
RETRY_CAP_S = 3600
SWEEP_S = 15.0
QUEUE_SIZE = 1000

NOTIFICATIONS = Counter(
    "oasis_alert_notifications_total", "Alert notifications by channel and outcome.", ["channel", "outcome"]
)


class NotificationError(RuntimeError):
    pass


def _text(alert: Alert, kind: str) -> str:
    head = {"firing": "FIRING", "reminder": "STILL FIRING", "resolved": "RESOLVED"}.get(kind, kind.upper())
    lines = [f"[{alert.severity.upper()}] {head}: {alert.title}"]
    if alert.detail:
        lines.append(alert.detail)
    lines.append(f"key {alert.key} · seen {alert.count}x since {alert.first_seen:%Y-%m-%d %H:%M:%S} UTC")
    if alert.incident_id:
        lines.append(f"incident {alert.incident_id}")
    return "\n".join(lines)


def _send_slack(alert: Alert, kind: str) -> None:
    url = settings.OASIS_SLACK_WEBHOOK_URL
    if not url:
        raise NotificationError("OASIS_SLACK_WEBHOOK_URL is not set any more")
    body = json.dumps({"text": _text(alert, kind)}).encode()
    # The operator's configured webhook (http/https checked in environment.py).
    request = urllib.request.Request(  # noqa: S310
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_S) as response:  # noqa: S310
            answer = response.read(200).decode(errors="replace").strip()
    except urllib.error.HTTPError as error:
        raise NotificationError(f"webhook answered {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        raise NotificationError(f"webhook unreachable: {getattr(error, 'reason', error)}") from None
    # Slack answers "ok"; anything else (an HTML error page from a proxy, say) is a failure.
    if answer != "ok":
        raise NotificationError(f"webhook answered {answer[:80]!r}, not 'ok'")


def _send_email(alert: Alert, kind: str) -> None:
    text = _text(alert, kind)
    try:
        send_mail(
            subject=text.splitlines()[0][:150],
            message=text,
            from_email=None,
            recipient_list=list(settings.OASIS_ALERT_EMAIL_TO),
        )
    except (OSError, ValueError) as error:  # smtplib errors are OSErrors
        raise NotificationError(f"SMTP: {error}") from None


SENDERS: dict[str, Callable[[Alert, str], None]] = {
    Notification.Channel.SLACK.value: _send_slack,
    Notification.Channel.EMAIL.value: _send_email,
}


def _claim(notification_id: int, now: datetime) -> bool:
    claimed = Notification.objects.filter(
        pk=notification_id, status=Notification.Status.PENDING, next_attempt_at__lte=now
    ).update(next_attempt_at=now + LEASE)
    return claimed == 1


def notification_send(notification_id: int, *, now: datetime | None = None) -> str | None:
    """Send one due notification; returns its outcome ("sent", "retry", "failed") or None
    when it was not due or another dispatcher holds it."""
    now = now or timezone.now()
    if not _claim(notification_id, now):
        return None
    row = Notification.objects.select_related("alert").get(pk=notification_id)
    try:
        SENDERS[row.channel](row.alert, row.kind)
    except NotificationError as error:
        row.attempts += 1
        row.last_error = str(error)[:1000]
        if row.attempts >= MAX_ATTEMPTS:
            row.status = Notification.Status.FAILED
            outcome = "failed"
        else:
            delay = min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (row.attempts - 1))
            row.next_attempt_at = timezone.now() + timedelta(seconds=delay)
            outcome = "retry"
        row.save(update_fields=["attempts", "last_error", "status", "next_attempt_at"])
        logger.warning("alert_notification_failed", channel=row.channel, alert=row.alert_id, error=str(error))
    else:
        row.attempts += 1
        row.status = Notification.Status.SENT
        row.sent_at = timezone.now()
        row.save(update_fields=["attempts", "status", "sent_at"])
        outcome = "sent"
    NOTIFICATIONS.labels(row.channel, outcome).inc()
    return outcome


def notifications_dispatch(*, limit: int = 100, now: datetime | None = None) -> int:
    """Send the due notifications (oldest first, at most `limit`); returns how many were sent."""
    now = now or timezone.now()
    due = Notification.objects.filter(status=Notification.Status.PENDING, next_attempt_at__lte=now).order_by(
        "id"
    )
    sent = 0
    for notification_id in list(due.values_list("id", flat=True)[:limit]):
        if notification_send(notification_id, now=now) == "sent":
            sent += 1
    return sent


class _Dispatcher:
    def __init__(self) -> None:
        self.queue: queue.Queue[int] = queue.Queue(maxsize=QUEUE_SIZE)
        self.thread = threading.Thread(target=self._run, name="alert-notifications", daemon=True)
        self.thread.start()

    def put(self, ids: Iterable[int]) -> None:
        for notification_id in ids:
            try:
                self.queue.put_nowait(notification_id)
            except queue.Full:
                NOTIFICATIONS.labels("any", "queue_full").inc()  # the row waits for the sweep

    def _run(self) -> None:
        while True:
            try:
                notification_id: int | None = self.queue.get(timeout=SWEEP_S)
            except queue.Empty:
                notification_id = None
            close_old_connections()
            try:
                if notification_id is None:
                    notifications_dispatch()
                else:
                    notification_send(notification_id)
            except Exception:  # a database hiccup: the rows stay pending for the next sweep
                logger.exception("alert_dispatch_failed")


_dispatcher: _Dispatcher | None = None
_dispatcher_lock = threading.Lock()


def dispatch_soon(ids: list[int]) -> None:
    """Hand committed notification ids to this process's dispatcher thread (started on first
    use) when OASIS_ALERT_DISPATCH_THREAD is on; otherwise the sweep (beat task) sends them."""
    global _dispatcher
    if not getattr(settings, "OASIS_ALERT_DISPATCH_THREAD", True):
        return
    with _dispatcher_lock:
        if _dispatcher is None:
            _dispatcher = _Dispatcher()
    _dispatcher.put(ids)
