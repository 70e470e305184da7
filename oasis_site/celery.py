"""The one Celery app, configured from Django settings (the ``CELERY_*`` names).

Without REDIS_URL (dev/test only) tasks run eagerly in the calling process; with it they
go to Redis. Tasks live in each app's ``tasks.py`` and are found by autodiscovery.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oasis_site.settings")

app = Celery("oasis")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
