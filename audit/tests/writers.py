"""Audit writers in separate processes, for the tests that prove the chain never forks."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_WRITER_SCRIPT = """
import django, sys
django.setup()
from audit.services import audit_record
label, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    audit_record(actor="system:" + label, action="test.concurrent", payload={"i": i})
"""


def start_writer_processes(
    *, env: dict[str, str], processes: int, events_each: int
) -> list[subprocess.Popen[str]]:
    """Start `processes` writers labelled system:proc<n>, each recording `events_each` events."""
    return [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER_SCRIPT, f"proc{n}", str(events_each)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]


def wait_for_writers(writers: list[subprocess.Popen[str]]) -> None:
    for writer in writers:
        _, stderr = writer.communicate(timeout=180)
        assert writer.returncode == 0, stderr
