"""Ingestion in several processes on one host: the symbols dealt into shards, one `manage.py
ingest` process each, started and stopped together by a supervisor.

Why: a close burst is read by one Python thread. At a thousand symbols closing in the same
instant, that thread's ~12 µs a frame, plus building the writes, is most of the latency; two
processes read their halves of the burst on two cores at once (decision 0014, session 17).

A shard takes every timeframe of its symbols, so derived timeframes are resampled in the process
that ingests their source. Each shard process is a whole `manage.py ingest`: its own streams,
buffers, writer, backfills, metrics port and alert keys (`--instance`), so a shard behaves
exactly like a single ingest process, and a stop drains each one.

The supervisor forwards SIGTERM/SIGINT to every shard and waits for them to drain. A shard that
exits on its own (a crash, a database that refused it) stops the others and the supervisor
exits with an error naming it, so whatever runs the supervisor (systemd, Kubernetes, `make run`)
restarts the whole set; each shard resumes from its stored candles and backfills the gap.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

import structlog

logger = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG = 1


def partition(names: Sequence[str], count: int) -> list[list[str]]:
    """`names` dealt into `count` shards in sorted order (round-robin), so shards differ in size
    by one at most and the same names always make the same shards."""
    if count < 1:
        raise ValueError("the number of shards must be at least 1")
    if count > len(names):
        raise ValueError(f"{count} shards for {len(names)} symbols: at most one shard per symbol")
    ordered = sorted(names)
    return [ordered[index::count] for index in range(count)]


def shard_instance(instance: str, index: int) -> str:
    """The instance name of shard `index` (0-based) of a supervisor named `instance`."""
    return f"{instance}.p{index + 1}" if instance else f"p{index + 1}"


@dataclass(frozen=True)
class ShardExit:
    index: int
    code: int
    requested: bool  # it was asked to stop (a stop signal, or another shard's exit)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the shard gets SIGTERM (and drains) if the supervisor is killed outright."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ShardSupervisor:
    """Run `commands` (one argument list per shard) until a stop signal or until one exits."""

    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        *,
        poll_s: float = 0.2,
        write: Callable[[str], None] = print,
    ) -> None:
        if not commands:
            raise ValueError("no shard to run")
        self._commands = [list(command) for command in commands]
        self._poll_s = poll_s
        self._write = write
        self._processes: list[subprocess.Popen[bytes]] = []
        self._stopping = False

    def run(self) -> list[ShardExit]:
        """Start every shard; return how each ended, in the order they did. A shard that ended
        without being asked to comes first (`requested` False); the others were then stopped."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for command in self._commands:
                self._processes.append(
                    subprocess.Popen(  # noqa: S603 - our own manage.py, arguments we built
                        command,
                        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                    )
                )
            self._write(f"supervising {len(self._processes)} ingest processes (pids {self.pids})")
            return self._wait()
        finally:
            self.stop()
            for process in self._processes:
                try:
                    process.wait()
                except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C while draining
                    process.kill()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def stop(self) -> None:
        """Ask every running shard to drain and stop (SIGTERM)."""
        self._stopping = True
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._write(f"{signal.Signals(signum).name}: stopping {len(self._processes)} ingest processes")
        self.stop()

    def _wait(self) -> list[ShardExit]:
        ended: list[ShardExit] = []
        while len(ended) < len(self._processes):
            for index, process in enumerate(self._processes):
                code = process.poll()
                if code is None or any(exit.index == index for exit in ended):
                    continue
                ended.append(ShardExit(index, code, requested=self._stopping))
                if not self._stopping:
                    logger.error("ingest_shard_exited", shard=index + 1, code=code, pid=process.pid)
                    self._write(f"ingest process {index + 1} exited with code {code}: stopping the others")
                    self.stop()
            time.sleep(self._poll_s)
        return ended
