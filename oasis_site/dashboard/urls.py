from django.urls import path

from oasis_site.dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("overview.json", views.overview_json, name="overview_json"),
    path("symbols/", views.symbols_index, name="symbols"),
    path("symbols/<str:symbol>/", views.symbol_page, name="symbol"),
    path("symbols/<str:symbol>/chart.json", views.symbol_json, name="symbol_json"),
    path("trading/", views.trading_page, name="trading"),
    path("trading.json", views.trading_json, name="trading_json"),
    path("operations/", views.operations_page, name="operations"),
    path("incidents/", views.incidents_page, name="incidents"),
    path("operations.json", views.operations_json, name="operations_json"),
]
