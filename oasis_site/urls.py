from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

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
    path("trading/", include("trading.urls")),
    path("api/v1/", include("oasis_site.api.urls")),
    # Until the dashboard lands, the front door is the admin.
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False), name="home"),
]
