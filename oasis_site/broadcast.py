"""The one way code outside a consumer sends to WebSocket clients: a channel-layer group event,
sent after the surrounding transaction commits (never for data that was rolled back)."""

from __future__ import annotations

from typing import Any

import structlog
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = structlog.get_logger(__name__)


def broadcast_after_commit(group: str, event: dict[str, Any]) -> None:
    """Send `event` (its "type" names the consumer handler, e.g. "signal.new") to `group`."""

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(layer.group_send)(group, event)
        except Exception:  # a broadcast is best-effort: the data is committed and readable
            logger.exception("broadcast_failed", group=group, type=event.get("type"))

    transaction.on_commit(send)
