"""structlog set-up: JSON lines in test/prod, a readable console renderer in dev.

Both structlog loggers and the standard library's (Django, Celery, daphne) go through the
same processors, so every line carries the timestamp, level, logger name and whatever
context is bound for the current request or connection (the request id).
"""

from __future__ import annotations

from typing import Any

import structlog

from oasis_site.environment import LogFormat

_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.stdlib.ExtraAdder(),
]


def logging_config(*, log_format: LogFormat, level: str) -> dict[str, Any]:
    """Configure structlog and return the `LOGGING` dict for Django's dictConfig."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED_PROCESSORS,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    renderer: Any
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        final = [structlog.processors.format_exc_info, renderer]
    else:
        final = [structlog.dev.ConsoleRenderer(colors=False)]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {
                "()": structlog.stdlib.ProcessorFormatter,
                "foreign_pre_chain": _SHARED_PROCESSORS,
                "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
            }
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "structured"},
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # Our access log replaces these; keep their warnings and errors.
            "django.server": {"level": "WARNING"},
            "django.request": {"level": "ERROR"},
            "django.channels.server": {"level": "WARNING"},
            "daphne.server": {"level": "INFO"},
            "daphne.http_protocol": {"level": "WARNING"},
            "daphne.ws_protocol": {"level": "WARNING"},
        },
    }
