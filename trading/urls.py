from django.urls import path

from trading import views

app_name = "trading"

urlpatterns = [
    path("backtests/<int:pk>/report/", views.backtest_report, name="backtest_report"),
    path("backtests/<int:pk>/report.json", views.backtest_report_json, name="backtest_report_json"),
]
