"""Loaded by pytest (``-p oasis_site.pytest_plugin`` in pyproject.toml) before pytest-django
reads the settings, so a bare ``pytest`` runs with OASIS_ENV=test as ``make test`` does."""

import os

os.environ.setdefault("OASIS_ENV", "test")
