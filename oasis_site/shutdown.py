"""The web server's graceful stop: drain, then exit.

On SIGTERM (a rolling update, `docker compose stop`, a Kubernetes pod deletion) `manage.py
serve` does not drop its connections on the floor, it drains:

1. /readyz answers 503 "draining" at once, so a load balancer stops routing new requests and
   WebSockets here (`OASIS_SHUTDOWN_DELAY_S` seconds are left for it to notice; Kubernetes'
   preStop hook does the same before the signal);
2. every live WebSocket is closed with 4503 (server restarting) and a reason; the pages reconnect at
   once (static/dashboard/live.js), to another instance or to this one's successor, and
   refetch what they may have missed;
3. requests in flight finish, for at most `OASIS_SHUTDOWN_GRACE_S` seconds;
4. the server stops. A second SIGTERM/SIGINT stops it at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import structlog

logger = structlog.get_logger(__name__)

# 1001 "going away" would be the standard code, but the server side (autobahn) only lets an
# application close with 1000 or 3000-4999: 4503, "service unavailable" in the private range.
CLOSE_GOING_AWAY = 4503
GOING_AWAY_REASON = "server restarting: reconnect"


class Closable(Protocol):
    async def close_going_away(self) -> None: ...


_draining = threading.Event()
_sockets: weakref.WeakSet[Any] = weakref.WeakSet()


def draining() -> bool:
    """True once this process has begun its graceful stop."""
    return _draining.is_set()


def socket_opened(consumer: Closable) -> None:
    _sockets.add(consumer)


def socket_closed(consumer: Closable) -> None:
    _sockets.discard(consumer)


async def drain(*, delay_s: float, grace_s: float, busy: Callable[[], int], stop: Callable[[], None]) -> None:
    """Run the graceful stop on the server's event loop. `busy()` counts the connections whose
    application is still running (requests in flight, WebSockets); `stop()` stops the server."""
    _draining.set()
    started = time.monotonic()
    logger.info("shutdown_draining", websockets=len(_sockets), busy=busy(), delay_s=delay_s, grace_s=grace_s)
    try:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        closing = list(_sockets)
        results = await asyncio.gather(
            *(consumer.close_going_away() for consumer in closing), return_exceptions=True
        )
        errors = [result for result in results if isinstance(result, BaseException)]
        failed = len(errors)
        if errors:
            logger.warning("shutdown_close_failed", sockets=failed, error=repr(errors[0])[:300])
        deadline = started + delay_s + grace_s
        while busy() > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        logger.info(
            "shutdown_drained",
            websockets_closed=len(closing) - failed,
            close_failures=failed,
            still_busy=busy(),
            took_s=round(time.monotonic() - started, 3),
        )
    finally:
        stop()
