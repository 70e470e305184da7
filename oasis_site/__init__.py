"""Oasis site package: settings, URLs, ASGI and Celery apps, feature-flag names."""

from oasis_site.celery import app as celery_app

__all__ = ["celery_app"]
