"""Test harness: real services where a test needs them.

Tests marked ``postgres`` need DATABASE_URL to point at PostgreSQL and tests marked
``redis`` need REDIS_URL. Without them they are skipped (so ``make test`` runs on a
machine with only Python), unless OASIS_REQUIRE_SERVICES=1, as in CI, where a missing
service fails the run instead of hiding tests.
"""

from __future__ import annotations

import os
from typing import Any

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from django.conf import settings

    on_postgres = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
    has_redis = bool(settings.REDIS_URL)
    required = os.environ.get("OASIS_REQUIRE_SERVICES") == "1"
    missing = []
    if not on_postgres and any("postgres" in item.keywords for item in items):
        missing.append("PostgreSQL (DATABASE_URL=postgres://...)")
    if not has_redis and any("redis" in item.keywords for item in items):
        missing.append("Redis (REDIS_URL=redis://...)")
    if missing and required:
        raise pytest.UsageError(
            f"OASIS_REQUIRE_SERVICES=1 but these are not configured: {', '.join(missing)}"
        )
    for item in items:
        if "postgres" in item.keywords and not on_postgres:
            item.add_marker(pytest.mark.skip(reason="needs PostgreSQL: set DATABASE_URL=postgres://..."))
        if "redis" in item.keywords and not has_redis:
            item.add_marker(pytest.mark.skip(reason="needs Redis: set REDIS_URL=redis://..."))


@pytest.fixture
def celery_inline(settings: object) -> object:
    """Run Celery tasks in the calling process for this test, as the embedded default does,
    even when REDIS_URL configures a broker (tests of what tasks do, not of their delivery;
    delivery through Redis to a worker has its own tests)."""
    from oasis_site.celery import app

    previous = app.conf.task_always_eager
    settings.CELERY_TASK_ALWAYS_EAGER = True  # type: ignore[attr-defined]
    app.conf.task_always_eager = True
    yield app
    app.conf.task_always_eager = previous


@pytest.fixture
def mongo(settings: Any, tmp_path: Any) -> Any:
    """A MongoDB wire-protocol server on loopback, MONGO_URL pointing at its `oasis_test` db."""
    from audit.tests.mongo_server import WireServer

    server = WireServer(tmp_path)
    server.start()
    settings.MONGO_URL = f"mongodb://127.0.0.1:{server.port}/oasis_test"
    try:
        yield server
    finally:
        server.stop()
