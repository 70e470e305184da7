from django.urls import path

from marketdata.api import views

urlpatterns = [
    path("symbols/", views.SymbolListApi.as_view(), name="symbols"),
    path("candles/", views.CandleListApi.as_view(), name="candles"),
    path("gaps/", views.GapListApi.as_view(), name="gaps"),
    path("backfills/", views.BackfillCreateApi.as_view(), name="backfills"),
]
