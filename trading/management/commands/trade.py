import signal
import threading
from types import FrameType
from typing import Any

import structlog
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from prometheus_client import start_http_server

from trading.runner import ExecutionSetupError, execution_loop, single_instance

logger = structlog.get_logger(__name__)


class Command(BaseCommand):
    help = (
        "Turn signals into orders: risk checks, the broker (dry-run unless the live_trading flag is on "
        "and API keys are set), fills, positions, reconciliation and the kill switch's tripwires. "
        "One process at a time. SIGTERM/SIGINT stop after the current signal."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--exchange", default=settings.OASIS_EXCHANGE)
        parser.add_argument("--poll-interval", type=float, default=0.25, help="seconds between idle cycles")
        parser.add_argument("--once", action="store_true", help="start (reconcile), run one cycle, stop")
        parser.add_argument(
            "--metrics-port", type=int, default=9102, help="Prometheus metrics port on OASIS_BIND (0: off)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not 0.01 <= options["poll_interval"] <= 60:
            raise CommandError("--poll-interval must be between 0.01 and 60 seconds")
        try:
            with single_instance():
                loop = execution_loop(exchange=options["exchange"])
                self.stdout.write(f"trading in {loop.config.mode} mode on {loop.config.exchange}")
                if options["metrics_port"]:
                    start_http_server(options["metrics_port"], addr=settings.OASIS_BIND)
                if options["once"]:
                    loop.start()
                    report = loop.cycle()
                    self.stdout.write(
                        f"decided {report.decided} signals: {report.orders} orders sent, "
                        f"{report.rejected} rejected, {report.skipped} skipped"
                    )
                    return
                stop = threading.Event()

                def request_stop(signum: int, frame: FrameType | None) -> None:
                    stop.set()

                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, request_stop)
                try:
                    loop.run(stop, poll_interval_s=options["poll_interval"])
                finally:
                    loop.broker.close()
                self.stdout.write("stopped")
        except ExecutionSetupError as error:
            raise CommandError(str(error)) from None
