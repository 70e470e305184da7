"""Whole processes: prod refuses to start on bad configuration, and is deploy-clean on good."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROD = {
    "OASIS_ENV": "prod",
    "SECRET_KEY": "k3y-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DATABASE_URL": "postgres://oasis@127.0.0.1:5432/oasis",
    "ALLOWED_HOSTS": "desk.example.com",
}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in PROD and k != "DEBUG"}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY is required when OASIS_ENV=prod"),
        ({"REDIS_URL": ""}, "REDIS_URL is required when OASIS_ENV=prod"),
        ({"DATABASE_URL": "postgres:/nohost"}, "DATABASE_URL is malformed"),
    ],
)
def test_prod_refuses_to_start_with_one_line(override, named):
    result = manage("check", env={**PROD, **override})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("oasis: refusing to start: ")
    assert named in lines[0]
    assert "Traceback" not in result.stderr


def test_prod_settings_pass_check_deploy():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PROD)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
