from django.conf import settings


def test_suite_runs_with_test_environment():
    assert settings.OASIS_ENV == "test"
    assert "testserver" in settings.ALLOWED_HOSTS
