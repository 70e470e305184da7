"""Market-data API: one operation per class (input serializer → selector or service → output
serializer)."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketdata.api.serializers import (
    BackfillInput,
    CandleListInput,
    CandleOutput,
    GapListInput,
    GapOutput,
    SymbolListInput,
    SymbolOutput,
)
from marketdata.backfill_requests import BackfillRequest, BackfillRequestError, backfill_request_submit
from marketdata.core.timeframes import Timeframe
from marketdata.models import Symbol
from marketdata.selectors import CANDLE_COLUMNS, candle_rows_as_text, gaps_list, symbol_find, symbols_list
from oasis_site.api.access import api_actor
from oasis_site.api.errors import invalid
from oasis_site.api.inputs import body_input, query_input
from oasis_site.api.pagination import Keyset, keyset_page, page_response, paginated
from oasis_site.api.renderers import CsvRenderer
from oasis_site.api.schema import BAD_INPUT, ERRORS


def _symbol(exchange: str | None, name: str) -> Symbol:
    exchange = exchange or settings.OASIS_EXCHANGE
    found = symbol_find(exchange=exchange, name=name)
    if found is None:
        raise invalid("symbol", f"unknown {exchange} symbol {name!r}")
    return found


class SymbolListApi(APIView):
    keyset = Keyset("id")

    @extend_schema(
        operation_id="symbols_list",
        parameters=[SymbolListInput],
        responses={200: paginated(SymbolOutput), **BAD_INPUT},
        tags=["market data"],
    )
    def get(self, request: Request) -> Response:
        params = query_input(request, SymbolListInput)
        data = params.validated_data
        rows = symbols_list(exchange=data.get("exchange"), status=data.get("status"))
        page = keyset_page(rows, keyset=self.keyset, cursor=data.get("cursor"), limit=params.page_limit())
        return page_response(request, page, SymbolOutput(page.rows, many=True).data)


class CandleListApi(APIView):
    """Closed candles of one symbol and timeframe, oldest first, as JSON or CSV."""

    keyset = Keyset("open_time", kind="time")
    renderer_classes = [JSONRenderer, CsvRenderer]
    csv_columns = CANDLE_COLUMNS

    @extend_schema(
        operation_id="candles_list",
        parameters=[
            CandleListInput,
            OpenApiParameter(
                "format", OpenApiTypes.STR, enum=["json", "csv"], description="csv: a header row, then rows."
            ),
        ],
        responses={
            (200, "application/json"): paginated(CandleOutput),
            (200, "text/csv"): OpenApiResponse(
                {"type": "string"}, description="A header row (the JSON fields), then one row a candle."
            ),
            **{(status_code, "application/json"): body for status_code, body in BAD_INPUT.items()},
        },
        tags=["market data"],
    )
    def get(self, request: Request) -> Response:
        params = query_input(request, CandleListInput)
        data = params.validated_data
        symbol = _symbol(data.get("exchange"), data["symbol"])
        rows = candle_rows_as_text(
            symbol_id=symbol.pk,
            timeframe=Timeframe(data["timeframe"]),
            start=data.get("start"),
            end=data.get("end"),
        )
        page = keyset_page(rows, keyset=self.keyset, cursor=data.get("cursor"), limit=params.page_limit())
        return page_response(request, page, CandleOutput(page.rows, many=True).data)


class GapListApi(APIView):
    keyset = Keyset("id", descending=True)

    @extend_schema(
        operation_id="gaps_list",
        parameters=[GapListInput],
        responses={200: paginated(GapOutput), **BAD_INPUT},
        tags=["market data"],
        description="Missing candles found by the gap scan or asked for by a backfill request, newest first.",
    )
    def get(self, request: Request) -> Response:
        params = query_input(request, GapListInput)
        data = params.validated_data
        symbol_id = None
        if data.get("symbol"):
            symbol_id = _symbol(data.get("exchange"), data["symbol"]).pk
        rows = gaps_list(symbol_id=symbol_id, timeframe=data.get("timeframe"), status=data.get("status"))
        page = keyset_page(rows, keyset=self.keyset, cursor=data.get("cursor"), limit=params.page_limit())
        return page_response(request, page, GapOutput(page.rows, many=True).data)


class BackfillCreateApi(APIView):
    @extend_schema(
        operation_id="backfills_create",
        request=BackfillInput,
        responses={202: GapOutput, **ERRORS},
        tags=["market data"],
        description=(
            "Queue a backfill of a range from the exchange's history. It is recorded as a gap (its id "
            "is returned; follow it at /api/v1/gaps/) and closed by the gap backfill worker."
        ),
    )
    def post(self, request: Request) -> Response:
        data = body_input(request, BackfillInput).validated_data
        backfill = BackfillRequest(
            exchange=data.get("exchange") or settings.OASIS_EXCHANGE,
            symbol=data["symbol"],
            timeframe=data["timeframe"],
            start=data["start"],
            end=data["end"],
        )
        try:
            gap = backfill_request_submit(request=backfill, actor=api_actor(request))
        except BackfillRequestError as error:
            raise invalid(error.field, str(error)) from None
        return Response(GapOutput(gap).data, status=status.HTTP_202_ACCEPTED)
