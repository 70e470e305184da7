"""The embedded default: a SQLite file as `make run` uses, written by several processes at
once (web, ingestor, worker), keeps one unforked chain: BEGIN IMMEDIATE makes each
audit_record wait for the write lock instead of reading a stale head."""

import os
import subprocess
import sys

from audit.tests.writers import ROOT, start_writer_processes, wait_for_writers


def test_concurrent_processes_on_a_sqlite_file_keep_one_chain(tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL"}},
        "OASIS_ENV": "test",
        "DJANGO_SETTINGS_MODULE": "oasis_site.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path}/embedded.sqlite3",
    }
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert migrate.returncode == 0, migrate.stderr
    wait_for_writers(start_writer_processes(env=env, processes=4, events_each=50))
    verify = subprocess.run(
        [sys.executable, "manage.py", "audit_verify"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stderr
    assert "audit chain intact: 200 events, head seq=200" in verify.stdout
