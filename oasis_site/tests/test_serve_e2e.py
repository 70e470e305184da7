"""What `make run` does, end to end: migrate a fresh SQLite database, create the dev admin,
serve with daphne on a real socket, and answer the probes, the metrics and the admin."""

import http.cookiejar
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import oasis_site
from oasis_site.tests.stack_harness import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def get(opener: urllib.request.OpenerDirector, url: str) -> tuple[int, dict[str, str], str]:
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def test_make_run_path_serves_probes_metrics_and_admin(tmp_path):
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "OASIS_ENV", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(
        OASIS_ENV="dev",
        OASIS_PORT=str(port),
        OASIS_LOG_FORMAT="json",
        DATABASE_URL=f"sqlite:///{tmp_path}/e2e.sqlite3",
    )

    def manage(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    manage("migrate", "--no-input")
    credentials = manage("ensure_dev_admin")
    match = re.search(r"user=(\S+)\s+password=(\S+)", credentials)
    assert match, credentials
    username, password = match.groups()

    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "manage.py", "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _, body = get(opener, f"{base}/healthz")
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
        assert (status, json.loads(body)) == (200, {"status": "alive", "version": oasis_site.__version__})

        status, _, body = get(opener, f"{base}/readyz")
        assert status == 200, body
        assert json.loads(body)["status"] == "ready"

        status, headers, body = get(opener, f"{base}/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        assert "# TYPE django_http_requests_total_by_method_total counter" in body

        status, headers, _ = get(opener, f"{base}/static/admin/css/base.css")
        assert status == 200
        assert headers["Content-Type"].startswith("text/css")

        status, _, body = get(opener, f"{base}/admin/login/")
        assert status == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body)
        assert token
        form = urllib.parse.urlencode(
            {
                "csrfmiddlewaretoken": token.group(1),
                "username": username,
                "password": password,
                "next": "/admin/",
            }
        ).encode()
        request = urllib.request.Request(
            f"{base}/admin/login/", data=form, headers={"Referer": f"{base}/admin/login/"}
        )
        with opener.open(request, timeout=10) as response:
            page = response.read().decode()
            assert response.url == f"{base}/admin/"
        assert "Oasis operations" in page
        assert "Audit log" in page
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("event") == "http_request"]
    assert {(line["path"], line["status"]) for line in access} >= {
        ("/healthz", 200),
        ("/readyz", 200),
        ("/metrics", 200),
        ("/admin/login/", 200),
        ("/admin/login/", 302),
        ("/admin/", 200),
    }
    assert all(line["client_ip"] == "127.0.0.1" and len(line["request_id"]) == 32 for line in access)
