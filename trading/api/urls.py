from django.urls import path

from trading.api import views

urlpatterns = [
    path("orders/", views.OrderListApi.as_view(), name="orders"),
    path("orders/<int:order_id>/", views.OrderDetailApi.as_view(), name="order"),
    path("positions/", views.PositionListApi.as_view(), name="positions"),
    path("decisions/", views.DecisionListApi.as_view(), name="decisions"),
    path("killswitch/", views.KillSwitchApi.as_view(), name="killswitch"),
    path("killswitch/engage/", views.KillSwitchEngageApi.as_view(), name="killswitch_engage"),
    path("killswitch/release/", views.KillSwitchReleaseApi.as_view(), name="killswitch_release"),
    path("backtests/", views.BacktestListApi.as_view(), name="backtests"),
    path("backtests/<int:run_id>/", views.BacktestDetailApi.as_view(), name="backtest"),
]
