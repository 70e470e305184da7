import asyncio
import signal
import sys
from types import FrameType
from typing import Any

from daphne.endpoints import build_endpoint_description_strings
from daphne.server import Server
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from oasis_site.broadcast import serve_web_here
from oasis_site.shutdown import drain


class Command(BaseCommand):
    help = (
        "Serve HTTP and WebSocket with daphne on OASIS_BIND:OASIS_PORT (default 127.0.0.1:8000). "
        "SIGTERM/SIGINT drain (readyz 503, WebSockets closed 4503, requests finish) and stop; "
        "a second one stops at once."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        from oasis_site.asgi import application

        serve_web_here()
        server: Server = Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=settings.OASIS_BIND, port=settings.OASIS_PORT),
            # Our own handlers (below): Twisted's would stop at once, dropping every connection.
            signal_handlers=False,
            application_close_timeout=10,
            # Our ASGI access log (oasis_site.access_log) writes one line per request.
            action_logger=None,
            verbosity=0,
            proxy_forwarded_address_header="X-Forwarded-For" if settings.OASIS_PROXY_HEADERS else None,
            proxy_forwarded_port_header="X-Forwarded-Port" if settings.OASIS_PROXY_HEADERS else None,
            proxy_forwarded_proto_header="X-Forwarded-Proto" if settings.OASIS_PROXY_HEADERS else None,
        )
        # Called on the main thread just before the reactor runs.
        server.ready_callable = lambda: self._install_signal_handlers(server)
        self.stdout.write(f"Oasis on http://{settings.OASIS_BIND}:{settings.OASIS_PORT}/ (Ctrl-C stops)")
        self.stdout.flush()
        server.run()
        if server.abort_start:
            raise CommandError(f"could not listen on {settings.OASIS_BIND}:{settings.OASIS_PORT}")
        self.stdout.write("stopped")

    def _install_signal_handlers(self, server: Server) -> None:
        """Called on the main thread just before the reactor runs (on the asyncio loop)."""
        loop = asyncio.get_event_loop()
        requested = []

        def busy() -> int:
            return sum(
                1
                for details in list(server.connections.values())
                if (instance := details.get("application_instance")) is not None and not instance.done()
            )

        def on_signal(signum: int, frame: FrameType | None) -> None:
            requested.append(signum)
            if len(requested) > 1:
                sys.stderr.write("second stop signal: stopping now\n")
                loop.call_soon_threadsafe(server.stop)
                return
            loop.call_soon_threadsafe(
                lambda: loop.create_task(
                    drain(
                        delay_s=settings.OASIS_SHUTDOWN_DELAY_S,
                        grace_s=settings.OASIS_SHUTDOWN_GRACE_S,
                        busy=busy,
                        stop=server.stop,
                    )
                )
            )

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)
