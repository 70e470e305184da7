"""Audit API: the log's events, newest first (input serializer → selector → output serializer)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.api.serializers import AuditEventListInput, AuditEventOutput
from audit.selectors import audit_events_list
from oasis_site.api.inputs import query_input
from oasis_site.api.pagination import Keyset, keyset_page, page_response, paginated
from oasis_site.api.schema import BAD_INPUT


class AuditEventListApi(APIView):
    keyset = Keyset("seq", descending=True)

    @extend_schema(
        operation_id="audit_events_list",
        parameters=[AuditEventListInput],
        responses={200: paginated(AuditEventOutput), **BAD_INPUT},
        tags=["audit"],
        description="Events of the append-only audit log, newest first, with their hash chain fields.",
    )
    def get(self, request: Request) -> Response:
        params = query_input(request, AuditEventListInput)
        data = params.validated_data
        rows = audit_events_list(
            action=data.get("action"),
            actor=data.get("actor"),
            object_type=data.get("object_type"),
            object_id=data.get("object_id"),
            start=data.get("start"),
            end=data.get("end"),
        )
        page = keyset_page(rows, keyset=self.keyset, cursor=data.get("cursor"), limit=params.page_limit())
        return page_response(request, page, AuditEventOutput(page.rows, many=True).data)
