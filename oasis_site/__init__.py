"""Oasis site package: settings, URLs, ASGI and Celery apps, feature-flag names."""

from oasis_site.celery import app as celery_app

# Semantic versioning (docs/release-checklist.md): MAJOR.MINOR.PATCH, with "-dev" while the
# next minor release is being assembled on main. The same string is pyproject.toml's version,
# the image tag and the git tag (prefixed "v"); /healthz reports it.
__version__ = "0.10.0-dev"

__all__ = ["__version__", "celery_app"]
