from typing import Any

from daphne.cli import CommandLineInterface
from django.conf import settings
from django.core.management.base import BaseCommand

from oasis_site.broadcast import serve_web_here


class Command(BaseCommand):
    help = "Serve HTTP and WebSocket with daphne on OASIS_BIND:OASIS_PORT (default 127.0.0.1:8000)."

    def handle(self, *args: Any, **options: Any) -> None:
        argv = [
            "--bind",
            settings.OASIS_BIND,
            "--port",
            str(settings.OASIS_PORT),
            # Our ASGI access log (oasis_site.access_log) writes one line per request.
            "--verbosity",
            "0",
            "--application-close-timeout",
            "10",
        ]
        if settings.OASIS_PROXY_HEADERS:
            argv.append("--proxy-headers")
        serve_web_here()
        self.stdout.write(f"Oasis on http://{settings.OASIS_BIND}:{settings.OASIS_PORT}/ (Ctrl-C stops)")
        self.stdout.flush()
        CommandLineInterface().run([*argv, "oasis_site.asgi:application"])
