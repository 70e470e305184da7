"""The REST API's settings: throttle rates from the environment (bad ones named), and what the
API is configured with (the rates, the client address, the error handler)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from oasis_site.environment import ConfigurationError, read_environment


def read(**env: str):
    return read_environment({"OASIS_ENV": "dev", **env}, base_dir=Path("/srv/oasis"))


def test_rates_default_to_600_reads_and_60_writes_a_minute():
    environment = read()
    assert (environment.api_read_rate, environment.api_write_rate) == ("600/min", "60/min")


def test_rates_are_read_from_the_environment():
    environment = read(OASIS_API_READ_RATE="20/s", OASIS_API_WRITE_RATE="1000/hour")
    assert (environment.api_read_rate, environment.api_write_rate) == ("20/s", "1000/hour")


@pytest.mark.parametrize("value", ["600", "0/min", "ten/min", "600/week", "-5/min", "600/min/x"])
def test_a_malformed_rate_is_refused_by_name(value):
    with pytest.raises(ConfigurationError, match="OASIS_API_READ_RATE"):
        read(OASIS_API_READ_RATE=value)


def test_the_api_settings_use_them():
    api: dict[str, Any] = settings.REST_FRAMEWORK
    assert set(api["DEFAULT_THROTTLE_RATES"]) == {"read", "write"}
    assert api["NUM_PROXIES"] == 0  # a client's X-Forwarded-For is never believed
    assert api["EXCEPTION_HANDLER"] == "oasis_site.api.errors.api_exception_handler"
    assert "rest_framework.authtoken" in settings.INSTALLED_APPS
