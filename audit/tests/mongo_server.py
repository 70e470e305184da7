"""A MongoDB wire-protocol server on loopback for tests (nx-27017, file backed so that a
restart keeps what it stored). The `mongo` fixture (conftest.py) points MONGO_URL at one."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from oasis_site.tests.stack_harness import free_port


class WireServer:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        executable = Path(sys.executable).with_name("nx-27017")
        self.process = subprocess.Popen(
            [
                str(executable),
                "--host",
                "127.0.0.1",
                "-p",
                str(self.port),
                "--db",
                str(self.folder / "mirror.db"),
                "--pid-file",
                str(self.folder / "nx.pid"),
                "--log-file",
                str(self.folder / "nx.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise AssertionError("the wire server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
