"""/api/v1/: each app's API, the OpenAPI schema and the documentation page."""

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView

from oasis_site.api.docs import ApiDocs
from oasis_site.api.errors import ApiNotFound

app_name = "api"

urlpatterns = [
    path("", include("marketdata.api.urls")),
    path("", include("rules.api.urls")),
    path("", include("trading.api.urls")),
    path("", include("audit.api.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", ApiDocs.as_view(), name="docs"),
    # Anything else under /api/v1/ (an unknown path, an id that is not a positive integer): a
    # JSON 404 like the API's own, not the site's HTML page.
    re_path(r"^.*$", ApiNotFound.as_view(), name="not_found"),
]
