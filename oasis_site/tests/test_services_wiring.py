"""Celery and the channel layer follow REDIS_URL: eager and in-memory without it (dev/test
only), Redis with it."""

import uuid

import pytest
from channels.layers import get_channel_layer
from django.conf import settings

from oasis_site.celery import app as celery_app


def test_celery_is_configured_from_settings():
    assert celery_app.conf.task_acks_late is True
    assert celery_app.conf.task_reject_on_worker_lost is True
    assert celery_app.conf.worker_prefetch_multiplier == 1
    if settings.REDIS_URL:
        assert celery_app.conf.broker_url == settings.REDIS_URL
        assert celery_app.conf.task_always_eager is False
    else:
        assert celery_app.conf.broker_url == "memory://"
        assert celery_app.conf.task_always_eager is True


@pytest.mark.asyncio
async def test_channel_layer_delivers_group_messages():
    layer = get_channel_layer()
    assert layer is not None
    channel = await layer.new_channel()
    group = f"test.{uuid.uuid4().hex}"
    await layer.group_add(group, channel)
    try:
        await layer.group_send(group, {"type": "candle.update", "close": "27450.12"})
        assert await layer.receive(channel) == {"type": "candle.update", "close": "27450.12"}
    finally:
        await layer.group_discard(group, channel)


@pytest.mark.redis
def test_channel_layer_is_redis_when_configured():
    layer = get_channel_layer()
    assert type(layer).__module__ == "channels_redis.core"
