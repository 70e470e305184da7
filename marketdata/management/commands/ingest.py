import asyncio
import gc
import signal
import sys
import time
from typing import Any

import structlog
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from prometheus_client import start_http_server

from audit.monitors import ServiceLevelMonitor
from marketdata.exchanges import PROFILES, exchange_profile
from marketdata.ingest.derived import DerivedRefresher
from marketdata.ingest.engine import IngestEngine
from marketdata.ingest.shards import ShardSupervisor, partition, shard_instance
from marketdata.ingest.writer import CandleWriter
from marketdata.management.options import symbols_option, timeframes_option
from marketdata.selectors import candle_recent_holes, candle_resume_points

logger = structlog.get_logger(__name__)


NOT_STREAMED = "{exchange} does not stream {name} (it is derived by resampling); streamable: "


class Command(BaseCommand):
    help = (
        "Ingest closed candles from an exchange's WebSocket streams into the database, "
        "backfilling over REST whatever the streams miss. SIGTERM/SIGINT drain and stop."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--exchange", default=settings.OASIS_EXCHANGE, help=f"one of {', '.join(PROFILES)}"
        )
        parser.add_argument(
            "--symbols", default="all", help="comma-separated symbols, or 'all' (TRADING ones)"
        )
        parser.add_argument("--timeframes", default="1m", help="comma-separated, e.g. 1m,5m,1h")
        parser.add_argument(
            "--lookback",
            type=int,
            default=60,
            help="closed candles to backfill for a stream with none stored",
        )
        parser.add_argument(
            "--hole-window",
            type=float,
            default=24.0,
            help="hours back from now in which holes between stored candles are backfilled at start",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=9101,
            help="Prometheus metrics port on OASIS_BIND (0: off); with --processes, process i (0-based) "
            "uses this port + 100 x i",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=settings.OASIS_INGEST_PROCESSES,
            help="ingest processes on this host, the symbols dealt among them (each takes every "
            "timeframe of its symbols); default OASIS_INGEST_PROCESSES",
        )
        parser.add_argument(
            "--instance",
            default="",
            help="this process's name in its alert keys and titles, when several ingest at once "
            "(shards of one exchange); the processes of --processes get <instance>.p1, .p2, …",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            profile = exchange_profile(options["exchange"], overrides=settings.OASIS_EXCHANGE_URLS)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        timeframes = timeframes_option(profile, options["timeframes"], refusal=NOT_STREAMED)
        symbol_ids = symbols_option(profile, options["symbols"])
        if options["lookback"] < 0:
            raise CommandError("--lookback must be 0 or more")
        if options["hole_window"] < 0:
            raise CommandError("--hole-window must be 0 or more (hours)")
        instance = options["instance"].strip()
        if instance and not all(ch.isalnum() or ch in "-_." for ch in instance):
            raise CommandError("--instance takes letters, digits, '-', '_' and '.' only")
        if options["processes"] != 1:
            self._supervise(profile.name, list(symbol_ids), timeframes, instance, options)
            return
        if options["metrics_port"]:
            start_http_server(options["metrics_port"], addr=settings.OASIS_BIND)
        resume = candle_resume_points(symbol_ids=symbol_ids, timeframes=timeframes)
        holes = candle_recent_holes(
            symbol_ids=symbol_ids,
            timeframes=timeframes,
            window_ms=int(options["hole_window"] * 3_600_000),
            now_ms=int(time.time() * 1000),
        )
        self.stdout.write(
            f"ingesting {len(symbol_ids)} symbols x {', '.join(tf.value for tf in timeframes)} from "
            f"{profile.name} ({profile.ws_url}); {len(resume)} streams resume from stored candles, "
            f"{sum(len(h) for h in holes.values())} holes behind them to backfill"
        )
        self.stdout.flush()
        suffix, named = (f".{instance}", f" ({instance})") if instance else ("", "")
        monitor = ServiceLevelMonitor(
            key=f"slo.ingest_p95{suffix}",
            title=f"WS → persisted{named}",
            threshold_ms=settings.OASIS_SLO_INGEST_P95_MS,
            window_s=settings.OASIS_SLO_WINDOW_S,
            interval_s=settings.OASIS_SLO_CHECK_S,
            actor="system:ingest",
        )
        post_close = ServiceLevelMonitor(
            key=f"slo.post_close_p95{suffix}",
            title=f"Close → calculated{named}",
            threshold_ms=settings.OASIS_SLO_POST_CLOSE_P95_MS,
            window_s=settings.OASIS_SLO_WINDOW_S,
            interval_s=settings.OASIS_SLO_CHECK_S,
            actor="system:ingest",
        )
        refresher = DerivedRefresher(latency_monitor=monitor, post_close_monitor=post_close)
        writer = CandleWriter(on_committed=refresher.after_commit)
        refresher.hold_while_busy(writer)
        engine = IngestEngine(
            profile=profile,
            symbol_ids=symbol_ids,
            timeframes=timeframes,
            writer=writer,
            resume_from=resume,
            resume_holes=holes,
            lookback_candles=options["lookback"],
            # Stale streams (reconnected, alerted) and reconnect storms raise alerts.
            health_alerts=True,
            instance=instance,
        )
        # Django, ccxt (every exchange class) and the buffers make a heap of a few hundred
        # thousand objects that live as long as the process: frozen out of the collector's
        # full passes, which would otherwise stall the loop for tens of ms in a close burst.
        gc.collect()
        gc.freeze()
        try:
            asyncio.run(self._run(engine, writer))
        except RuntimeError as exc:
            raise CommandError(f"{exc}: {exc.__cause__}") from exc
        finally:
            refresher.close()
        stats, written = engine.stats, writer.stats
        self.stdout.write(
            f"stopped: {stats.frames} frames, {stats.closed} closes, {stats.backfilled} backfilled, "
            f"{stats.rejected} rejected, {stats.ignored} ignored; {written.candles} candles committed "
            f"({written.written} new or changed rows) in {written.batches} batches"
        )

    def _supervise(
        self, exchange: str, names: list[str], timeframes: list[Any], instance: str, options: dict[str, Any]
    ) -> None:
        """--processes N: N shard processes of this command, supervised until a stop signal."""
        try:
            shards = partition(names, options["processes"])
        except ValueError as exc:
            raise CommandError(f"--processes: {exc}") from None
        instances = [shard_instance(instance, index) for index in range(len(shards))]
        commands = []
        for index, shard in enumerate(shards):
            # + 100 x i: clear of the trade process (9102) and the Celery pool (9103 + i).
            port = options["metrics_port"] + 100 * index if options["metrics_port"] else 0
            commands.append(
                [
                    sys.executable,
                    str(settings.BASE_DIR / "manage.py"),
                    "ingest",
                    "--exchange", exchange,
                    "--symbols", ",".join(shard),
                    "--timeframes", ",".join(tf.value for tf in timeframes),
                    "--lookback", str(options["lookback"]),
                    "--hole-window", str(options["hole_window"]),
                    "--metrics-port", str(port),
                    "--processes", "1",
                    "--instance", instances[index],
                ]
            )  # fmt: skip
            self.stdout.write(
                f"process {index + 1} ({instances[index]}): {len(shard)} symbols"
                + (f", metrics on port {port}" if port else "")
            )
        self.stdout.flush()
        exits = ShardSupervisor(commands, write=self._say).run()
        first = exits[0]
        if not first.requested:
            raise CommandError(
                f"ingest process {first.index + 1} ({instances[first.index]}) exited "
                f"with code {first.code}; the other processes were stopped"
            )
        failed = [exit for exit in exits if exit.code != 0]
        if failed:
            raise CommandError(
                "ingest processes did not stop cleanly: "
                + ", ".join(f"{exit.index + 1} (code {exit.code})" for exit in failed)
            )
        self.stdout.write(f"stopped: all {len(exits)} ingest processes drained")

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()

    async def _run(self, engine: IngestEngine, writer: CandleWriter) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Leaving the writer's block writes everything the engine handed over before stopping.
        async with writer.running(on_failure=stop):
            await engine.run(stop)
