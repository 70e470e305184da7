"""/api/v1/: each app's API, the OpenAPI schema and the documentation page."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from oasis_site.api.docs import ApiDocs

app_name = "api"

urlpatterns = [
    path("", include("marketdata.api.urls")),
    path("", include("rules.api.urls")),
    path("", include("trading.api.urls")),
    path("", include("audit.api.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", ApiDocs.as_view(), name="docs"),
]
