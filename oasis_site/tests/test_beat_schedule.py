"""Every Celery beat entry names a task that exists (a typo would fail silently in beat)."""

from django.conf import settings

from oasis_site.celery import app


def test_every_beat_entry_resolves_to_a_registered_task():
    app.loader.import_default_modules()
    registered = set(app.tasks)
    schedule = settings.CELERY_BEAT_SCHEDULE
    assert schedule, "no beat entries"
    missing = {name: entry["task"] for name, entry in schedule.items() if entry["task"] not in registered}
    assert missing == {}
    for entry in schedule.values():
        assert float(entry["schedule"]) > 0  # type: ignore[arg-type]
