from django.urls import path

from rules.api import views

urlpatterns = [
    path("rules/", views.RuleListApi.as_view(), name="rules"),
    path("rules/<int:rule_id>/", views.RuleDetailApi.as_view(), name="rule"),
    path("rules/<int:rule_id>/versions/", views.VersionListApi.as_view(), name="rule_versions"),
    path(
        "rules/<int:rule_id>/versions/<int:number>/activate/",
        views.VersionActivateApi.as_view(),
        name="rule_version_activate",
    ),
    path("signals/", views.SignalListApi.as_view(), name="signals"),
    path("indicators/", views.IndicatorApi.as_view(), name="indicators"),
]
