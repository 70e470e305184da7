"""Who may use the REST API and how much: the api_auth_required flag (off: open; on: a token or
a session, and staff for writes), throttling per client IP and per route with 429 and
Retry-After (in the embedded cache and in Redis), and CORS from the allow-list only."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from waffle.testutils import override_flag

from audit.models import AuditEvent
from oasis_site.flags import API_AUTH_REQUIRED

pytestmark = pytest.mark.django_db

KILLSWITCH = "/api/v1/killswitch/"
RELEASE = "/api/v1/killswitch/release/"


@pytest.fixture(autouse=True)
def fresh_cache():
    cache.clear()


@pytest.fixture
def tight(settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"read": "3/min", "write": "2/min"},
    }


def token_client(username: str, *, staff: bool = False) -> APIClient:
    user = get_user_model().objects.create_user(username, is_staff=staff)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


# --- The auth flag -----------------------------------------------------------------------------


def test_with_the_flag_off_the_api_is_open_for_reads_and_writes():
    client = APIClient()
    assert client.get(KILLSWITCH).status_code == 200
    response = client.post(RELEASE, {"reason": "local script"}, format="json")
    assert response.status_code == 200
    assert AuditEvent.objects.get(action="trading.killswitch").actor == "api:anonymous"


def test_with_the_flag_on_anonymous_is_refused_and_a_token_is_served():
    with override_flag(API_AUTH_REQUIRED, active=True):
        anonymous = APIClient().get(KILLSWITCH)
        assert anonymous.status_code == 401
        assert anonymous["WWW-Authenticate"] == "Token"
        assert APIClient().post(RELEASE, {"reason": "x"}, format="json").status_code == 401
        assert APIClient().get("/api/v1/schema/").status_code == 401
        assert APIClient().get("/api/v1/docs/").status_code == 401
        assert token_client("reader").get(KILLSWITCH).status_code == 200
        bad = APIClient()
        bad.credentials(HTTP_AUTHORIZATION="Token not-a-token")
        assert bad.get(KILLSWITCH).status_code == 401
    assert AuditEvent.objects.filter(action="trading.killswitch").count() == 0


def test_with_the_flag_on_writes_need_a_staff_user_and_are_audited_as_that_user():
    with override_flag(API_AUTH_REQUIRED, active=True):
        refused = token_client("reader").post(RELEASE, {"reason": "x"}, format="json")
        assert refused.status_code == 403
        assert "staff" in refused.json()["detail"]
        staff = token_client("operator", staff=True)
        assert staff.post(RELEASE, {"reason": "all clear"}, format="json").status_code == 200
    assert AuditEvent.objects.get(action="trading.killswitch").actor == "user:operator"


def test_with_the_flag_on_an_admin_session_is_served_too():
    user = get_user_model().objects.create_user("desk", password="pw-for-tests-only")
    client = APIClient()
    assert client.login(username="desk", password="pw-for-tests-only")
    with override_flag(API_AUTH_REQUIRED, active=True):
        assert client.get(KILLSWITCH).status_code == 200
    assert user.is_authenticated


# --- Throttling --------------------------------------------------------------------------------


def test_over_the_rate_a_route_answers_429_with_retry_after(tight):
    client = APIClient()
    assert [client.get(KILLSWITCH).status_code for _ in range(3)] == [200, 200, 200]
    throttled = client.get(KILLSWITCH)
    assert throttled.status_code == 429
    assert 1 <= int(throttled["Retry-After"]) <= 60
    assert "throttled" in throttled.json()["detail"].lower()


def test_budgets_are_per_route_per_client_ip_and_apart_for_writes(tight):
    client = APIClient()
    for _ in range(3):
        client.get(KILLSWITCH)
    assert client.get(KILLSWITCH).status_code == 429
    assert client.get("/api/v1/positions/").status_code == 200  # another route
    assert client.get(KILLSWITCH, REMOTE_ADDR="10.1.2.3").status_code == 200  # another client
    # A client's own X-Forwarded-For is not believed: still the same address, still throttled.
    assert client.get(KILLSWITCH, HTTP_X_FORWARDED_FOR="10.9.9.9").status_code == 429
    writes = [client.post(RELEASE, {"reason": "x"}, format="json").status_code for _ in range(3)]
    assert writes == [200, 200, 429]


@pytest.mark.redis
def test_throttle_counts_live_in_redis_where_every_web_process_sees_them(tight):
    import redis

    assert django_settings.CACHES["default"]["BACKEND"].endswith("RedisCache")
    client = APIClient()
    for _ in range(3):
        client.get(KILLSWITCH)
    keys = redis.Redis.from_url(str(django_settings.REDIS_URL)).keys("*api-throttle:read:*killswitch/*")
    assert len(keys) == 1
    # Another process (here: another cache connection) sees the same count and refuses.
    cache.close()
    throttled = APIClient().get(KILLSWITCH)
    assert throttled.status_code == 429
    assert int(throttled["Retry-After"]) >= 1


# --- CORS -----------------------------------------------------------------------------------------


def test_cors_answers_only_the_allowed_origins(settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://desk.example.com"]
    allowed = APIClient().get(KILLSWITCH, HTTP_ORIGIN="https://desk.example.com")
    assert allowed["Access-Control-Allow-Origin"] == "https://desk.example.com"
    other = APIClient().get(KILLSWITCH, HTTP_ORIGIN="https://evil.example.com")
    assert "Access-Control-Allow-Origin" not in other


def test_a_body_that_is_not_a_json_object_is_named_body():
    client = APIClient()
    not_json = client.post(RELEASE, "not json", content_type="application/json")
    assert not_json.status_code == 400
    assert list(not_json.json()["errors"]) == ["body"]
    a_list = client.post(RELEASE, "[1, 2]", content_type="application/json")
    assert a_list.json()["errors"] == {"body": ["must be a JSON object"]}
    assert AuditEvent.objects.count() == 0
