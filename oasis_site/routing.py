"""The site's own WebSocket routes. Each app adds its routes in its own ``routing.py``."""

from django.urls import path

from oasis_site.consumers import LiveConsumer, PingConsumer

websocket_urlpatterns = [
    path("ws/ping/", PingConsumer.as_asgi()),
    path("ws/live/", LiveConsumer.as_asgi()),
]
