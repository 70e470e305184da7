"""/healthz, /readyz, /metrics and the admin entry points."""

import re
import tomllib
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import Client

import oasis_site

pytestmark = pytest.mark.django_db


def test_healthz_is_alive_without_touching_dependencies(client: Client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "alive", "version": oasis_site.__version__}
    assert response["Cache-Control"].startswith("max-age=0")


# Semantic versioning: MAJOR.MINOR.PATCH, optionally "-dev" while the next release is assembled.
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-dev)?")


def test_healthz_reports_the_one_version_string(client: Client):
    """/healthz, the package and pyproject.toml say the same version, a semantic one: the
    image tag and the git tag are made from it (docs/release-checklist.md)."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert SEMVER.fullmatch(oasis_site.__version__), oasis_site.__version__
    assert pyproject["project"]["version"] == oasis_site.__version__
    assert client.get("/healthz").json()["version"] == oasis_site.__version__


def test_readyz_ready_on_the_configured_services(client: Client):
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert body["failing"] == []
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["migrations"] == {
        **body["checks"]["migrations"],
        "ok": True,
        "detail": "all applied",
    }


def test_readyz_names_redis_when_unreachable(client: Client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "unavailable"
    assert body["failing"] == ["redis"]
    assert body["checks"]["redis"]["ok"] is False
    assert "ConnectionError" in body["checks"]["redis"]["detail"]
    assert body["checks"]["database"]["ok"] is True


@pytest.mark.redis
def test_readyz_checks_real_redis_when_configured(client: Client, settings):
    assert settings.REDIS_URL
    body = client.get("/readyz").json()
    assert body["checks"]["redis"] == {**body["checks"]["redis"], "ok": True, "detail": "reachable"}


@pytest.mark.django_db(transaction=True)
def test_readyz_names_unapplied_migrations(client: Client):
    call_command("migrate", "oasis_site", "zero", verbosity=0)
    try:
        response = client.get("/readyz")
        body = response.json()
        assert response.status_code == 503
        assert body["failing"] == ["migrations"]
        assert "oasis_site.0001_feature_flags" in body["checks"]["migrations"]["detail"]
    finally:
        call_command("migrate", "oasis_site", verbosity=0)
    assert client.get("/readyz").status_code == 200


def test_readyz_refuses_other_methods(client: Client):
    assert client.post("/readyz").status_code == 405


def test_metrics_in_prometheus_text_format(client: Client):
    client.get("/healthz")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    assert "# TYPE django_http_requests_total_by_view_transport_method_total counter" in text
    assert 'view="healthz"' in text


@pytest.mark.django_db
def test_front_door_is_the_dashboard_overview(client: Client):
    response = client.get("/")
    assert response.status_code == 200
    assert 'id="overview-data"' in response.content.decode()


def test_admin_requires_login_and_is_branded(client: Client):
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    login = client.get("/admin/login/")
    assert login.status_code == 200
    assert "Oasis operations" in login.content.decode()


def test_security_headers(client: Client):
    response = client.get("/healthz")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"


def test_cors_only_for_listed_origins(client: Client, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://desk.example.com"]
    allowed = client.get("/healthz", headers={"Origin": "https://desk.example.com"})
    assert allowed["Access-Control-Allow-Origin"] == "https://desk.example.com"
    other = client.get("/healthz", headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in other


def test_feature_flags_exist_off_and_are_editable_in_admin(admin_client: Client):
    from waffle.models import Flag

    from oasis_site import flags

    rows = {flag.name: flag for flag in Flag.objects.filter(name__in=flags.ALL_FLAGS)}
    assert set(rows) == set(flags.ALL_FLAGS)
    assert all(flag.everyone is False for flag in rows.values())
    live = rows[flags.LIVE_TRADING]
    page = admin_client.get(f"/admin/waffle/flag/{live.pk}/change/")
    assert page.status_code == 200
    assert admin_client.get("/admin/waffle/switch/").status_code == 200
