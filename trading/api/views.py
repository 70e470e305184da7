"""Trading API: one operation per class (input serializer → selector or service → output
serializer). Writes go through the same services as the admin and `manage.py`, audited with the
API user as actor."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketdata.selectors import symbol_find
from oasis_site.api.access import api_actor
from oasis_site.api.errors import invalid
from oasis_site.api.inputs import body_input, query_input
from oasis_site.api.pagination import Keyset, keyset_page, page_response, paginated
from oasis_site.api.schema import ACCESS, BAD_INPUT, NOT_FOUND
from trading.api.serializers import (
    BacktestCreateInput,
    BacktestDetailOutput,
    BacktestListInput,
    BacktestOutput,
    DecisionListInput,
    DecisionOutput,
    KillSwitchEngageInput,
    KillSwitchOutput,
    KillSwitchReleaseInput,
    OrderDetailOutput,
    OrderListInput,
    OrderOutput,
    PositionListInput,
    PositionOutput,
)
from trading.backtest_requests import backtest_request_run
from trading.backtests import BacktestInputError, BacktestRequest
from trading.core.types import KillSwitchState
from trading.killswitch import KillSwitchError, killswitch_engage, killswitch_release, killswitch_view
from trading.selectors import (
    backtest_get,
    backtests_list,
    decisions_list,
    order_get,
    orders_list,
    positions_list,
)

TAGS = ["trading"]


class OrderListApi(APIView):
    keyset = Keyset("id", descending=True)

    @extend_schema(
        operation_id="orders_list",
        parameters=[OrderListInput],
        responses={200: paginated(OrderOutput), **BAD_INPUT},
        tags=TAGS,
        description="Orders, newest first.",
    )
    def get(self, request: Request) -> Response:
        params = query_input(request, OrderListInput)
        data = params.validated_data
        symbol_id = None
        if data.get("symbol"):
            exchange = data.get("exchange") or settings.OASIS_EXCHANGE
            symbol = symbol_find(exchange=exchange, name=data["symbol"])
            if symbol is None:
                raise invalid("symbol", f"unknown {exchange} symbol {data['symbol']!r}")
            symbol_id = symbol.pk
        rows = orders_list(
            mode=data.get("mode"),
            status=data.get("status"),
            symbol_id=symbol_id,
            start=data.get("start"),
            end=data.get("end"),
        )
        page = keyset_page(rows, keyset=self.keyset, cursor=data.get("cursor"), limit=params.page_limit())
        return page_response(request, page, OrderOutput(page.rows, many=True).data)


class OrderDetailApi(APIView):
    @extend_schema(
        operation_id="orders_retrieve",
        parameters=[OpenApiParameter("order_id", int, OpenApiParameter.PATH)],
        responses={200: OrderDetailOutput, **NOT_FOUND},
        tags=TAGS,
        description="One order with its fills.",
    )
    def get(self, request: Request, order_id: int) -> Response:
        order = order_get(order_id=order_id)
        if order is None:
            raise exceptions.NotFound(f"no order with id {order_id}")
        return Response(OrderDetailOutput(order).data)


class PositionListApi(APIView):
    keyset = Keyset("id")

    @extend_schema(
        operation_id="positions_list",
        parameters=[PositionListInput],
        responses={200: paginated(PositionOutput), **BAD_INPUT},
        tags=TAGS,
    )
    def get(self, request: Request) -> Response:
        params = query_input(request, PositionListInput)
        data = params.validated_data
        rows = positions_list(mode=data.get("mode"), open_only=data["open"])
        page = keyset_page(rows, keyset=self.keyset, cursor=data.get("cursor"), limit=params.page_limit())
        return page_response(request, page, PositionOutput(page.rows, many=True).data)


class KillSwitchApi(APIView):
    @extend_schema(
        operation_id="killswitch_retrieve",
        responses={200: KillSwitchOutput, **ACCESS},
        tags=TAGS,
    )
    def get(self, request: Request) -> Response:
        return Response(KillSwitchOutput(killswitch_view()).data)


class KillSwitchEngageApi(APIView):
    @extend_schema(
        operation_id="killswitch_engage",
        request=KillSwitchEngageInput,
        responses={200: KillSwitchOutput, **BAD_INPUT},
        tags=TAGS,
        description="Halt trading, or let only orders that reduce a position through (audited).",
    )
    def post(self, request: Request) -> Response:
        data = body_input(request, KillSwitchEngageInput).validated_data
        try:
            killswitch_engage(
                state=KillSwitchState(data["state"]), reason=data["reason"], actor=api_actor(request)
            )
        except KillSwitchError as error:
            raise invalid("reason", str(error)) from None
        return Response(KillSwitchOutput(killswitch_view()).data)


class KillSwitchReleaseApi(APIView):
    @extend_schema(
        operation_id="killswitch_release",
        request=KillSwitchReleaseInput,
        responses={200: KillSwitchOutput, **BAD_INPUT},
        tags=TAGS,
        description="Back to active trading (audited).",
    )
    def post(self, request: Request) -> Response:
        data = body_input(request, KillSwitchReleaseInput).validated_data
        try:
            killswitch_release(reason=data["reason"], actor=api_actor(request))
        except KillSwitchError as error:
            raise invalid("reason", str(error)) from None
        return Response(KillSwitchOutput(killswitch_view()).data)


# Which field a BacktestInputError is about, from the service's message (written for the CLI).
_BACKTEST_FIELDS = (
    ("no rule named", "rule"),
    ("has no active version", "version"),
    ("has no version", "version"),
    ("--since", "start"),
    ("--until", "end"),
    ("--fee", "fee_bps"),
    ("--slippage", "slippage_bps"),
    ("unknown symbol", "symbols"),
    ("timeframe", "timeframes"),
)


class BacktestListApi(APIView):
    keyset = Keyset("id", descending=True)

    @extend_schema(
        operation_id="backtests_list",
        parameters=[BacktestListInput],
        responses={200: paginated(BacktestOutput), **BAD_INPUT},
        tags=TAGS,
        description="Backtest runs, newest first, without their results (see a run's detail).",
    )
    def get(self, request: Request) -> Response:
        params = query_input(request, BacktestListInput)
        data = params.validated_data
        rows = backtests_list(status=data.get("status"), rule_id=data.get("rule"))
        page = keyset_page(rows, keyset=self.keyset, cursor=data.get("cursor"), limit=params.page_limit())
        return page_response(request, page, BacktestOutput(page.rows, many=True).data)

    @extend_schema(
        operation_id="backtests_create",
        request=BacktestCreateInput,
        responses={201: BacktestDetailOutput, **BAD_INPUT},
        tags=TAGS,
        description=(
            "Replay a rule version over stored candles and store the run (in the request: a year of 1m "
            "candles of one symbol takes seconds). Bad input is refused before anything is stored."
        ),
    )
    def post(self, request: Request) -> Response:
        data = body_input(request, BacktestCreateInput).validated_data
        backtest = BacktestRequest(
            rule=data["rule"],
            since=data["start"],
            until=data["end"],
            version=data.get("version"),
            symbols=data.get("symbols"),
            timeframes=data.get("timeframes"),
            fee_bps=data.get("fee_bps"),
            slippage_bps=data.get("slippage_bps"),
            exchange=data.get("exchange"),
            **({"opening_balance": data["opening_balance"]} if "opening_balance" in data else {}),
        )
        try:
            run = backtest_request_run(request=backtest, actor=api_actor(request))
        except BacktestInputError as error:
            message = str(error)
            field = next((name for marker, name in _BACKTEST_FIELDS if marker in message), "start")
            raise invalid(field, message) from None
        return Response(BacktestDetailOutput(run).data, status=status.HTTP_201_CREATED)


class BacktestDetailApi(APIView):
    @extend_schema(
        operation_id="backtests_retrieve",
        parameters=[OpenApiParameter("run_id", int, OpenApiParameter.PATH)],
        responses={200: BacktestDetailOutput, **NOT_FOUND},
        tags=TAGS,
    )
    def get(self, request: Request, run_id: int) -> Response:
        run = backtest_get(run_id=run_id)
        if run is None:
            raise exceptions.NotFound(f"no backtest run with id {run_id}")
        return Response(BacktestDetailOutput(run).data)


class DecisionListApi(APIView):
    keyset = Keyset("id", descending=True)

    @extend_schema(
        operation_id="decisions_list",
        parameters=[DecisionListInput],
        responses={200: paginated(DecisionOutput), **BAD_INPUT},
        tags=TAGS,
        description="What the execution loop decided for each signal (an order, or a skip and why).",
    )
    def get(self, request: Request) -> Response:
        params = query_input(request, DecisionListInput)
        data = params.validated_data
        rows = decisions_list(mode=data.get("mode"), outcome=data.get("outcome"))
        page = keyset_page(rows, keyset=self.keyset, cursor=data.get("cursor"), limit=params.page_limit())
        return page_response(request, page, DecisionOutput(page.rows, many=True).data)
