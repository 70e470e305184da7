"""ASGI entry point: daphne serves HTTP and WebSocket from here.

WebSocket routes are composed from each app's ``routing.py`` inside the origin validator
(only origins matching ALLOWED_HOSTS may open a socket) and the session/auth middleware.
The access log wraps both protocols.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oasis_site.settings")

# Django must be set up before anything imports models (consumers, routing).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from oasis_site import routing as site_routing  # noqa: E402
from oasis_site.access_log import AccessLogMiddleware  # noqa: E402

websocket_urlpatterns = [
    *site_routing.websocket_urlpatterns,
]

application = AccessLogMiddleware(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        }
    )
)
