from django.contrib import admin
from django.urls import include, path

from oasis_site import views

admin.site.site_header = "Oasis operations"
admin.site.site_title = "Oasis operations"
admin.site.index_title = "Operations"

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("internal/broadcast", views.broadcast_relay, name="broadcast-relay"),
    path("", include("django_prometheus.urls")),
    path("admin/", admin.site.urls),
    # The dashboard first: its "trading/" page is exact, the trading app's pages are below it.
    path("", include("oasis_site.dashboard.urls")),
    path("trading/", include("trading.urls")),
    path("api/v1/", include("oasis_site.api.urls")),
]
