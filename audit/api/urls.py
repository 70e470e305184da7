from django.urls import path

from audit.api import views

urlpatterns = [
    path("audit-events/", views.AuditEventListApi.as_view(), name="audit_events"),
]
