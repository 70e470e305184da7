"""Rules API: one operation per class (input serializer → selector or service → output
serializer). Rule writes go through the same services as the admin (`rules.services`), so a
version created here is validated exactly as one saved there."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketdata.core.timeframes import Timeframe, utc_from_ms
from marketdata.models import Symbol
from marketdata.selectors import symbol_find
from oasis_site.api.access import api_actor
from oasis_site.api.errors import invalid
from oasis_site.api.inputs import body_input, query_input
from oasis_site.api.pagination import Keyset, Page, keyset_page, page_response, paginated
from oasis_site.api.schema import BAD_INPUT, BAD_INPUT_OR_NOT_FOUND, NOT_FOUND
from rules.api.serializers import (
    IndicatorInput,
    IndicatorRowOutput,
    RuleCreateInput,
    RuleListInput,
    RuleOutput,
    SignalListInput,
    SignalOutput,
    VersionCreateInput,
    VersionListInput,
    VersionOutput,
)
from rules.engine.evaluator import indicator_for
from rules.engine.spec import IndicatorDecl
from rules.models import RuleConfig
from rules.selectors import (
    indicator_values,
    rule_config_get,
    rule_configs_list,
    rule_version_get,
    rule_versions_list,
    signals_list,
)
from rules.services import RuleInputError, rule_config_create, rule_version_activate, rule_version_create

TAGS = ["rules"]
RULE_ID = OpenApiParameter("rule_id", int, OpenApiParameter.PATH, description="The rule's id.")
NUMBER = OpenApiParameter("number", int, OpenApiParameter.PATH, description="The version's number.")


def _symbol(exchange: str | None, name: str) -> Symbol:
    exchange = exchange or settings.OASIS_EXCHANGE
    found = symbol_find(exchange=exchange, name=name)
    if found is None:
        raise invalid("symbol", f"unknown {exchange} symbol {name!r}")
    return found


def _config(rule_id: int) -> RuleConfig:
    config = rule_config_get(config_id=rule_id)
    if config is None:
        raise exceptions.NotFound(f"no rule with id {rule_id}")
    return config


def _rule_input_error(error: RuleInputError) -> exceptions.ValidationError:
    errors: dict[str, list[str]] = {}
    for field, message in error.errors:
        errors.setdefault(field, []).append(message)
    return exceptions.ValidationError(errors)


class RuleListApi(APIView):
    keyset = Keyset("id")

    @extend_schema(
        operation_id="rules_list",
        parameters=[RuleListInput],
        responses={200: paginated(RuleOutput), **BAD_INPUT},
        tags=TAGS,
    )
    def get(self, request: Request) -> Response:
        params = query_input(request, RuleListInput)
        data = params.validated_data
        rows = rule_configs_list(status=data.get("status"))
        page = keyset_page(rows, keyset=self.keyset, cursor=data.get("cursor"), limit=params.page_limit())
        return page_response(request, page, RuleOutput(page.rows, many=True).data)

    @extend_schema(
        operation_id="rules_create",
        request=RuleCreateInput,
        responses={201: RuleOutput, **BAD_INPUT},
        tags=TAGS,
        description="A new rule (draft) with its version 1, validated as the admin validates it.",
    )
    def post(self, request: Request) -> Response:
        data = body_input(request, RuleCreateInput).validated_data
        try:
            config = rule_config_create(
                name=data["name"],
                description=data["description"],
                symbols=data["symbols"],
                spec=data["spec"],
                author=api_actor(request),
                comment=data["comment"],
            )
        except RuleInputError as error:
            raise _rule_input_error(error) from None
        return Response(RuleOutput(_config(config.pk)).data, status=status.HTTP_201_CREATED)


class RuleDetailApi(APIView):
    @extend_schema(
        operation_id="rules_retrieve",
        parameters=[RULE_ID],
        responses={200: RuleOutput, **NOT_FOUND},
        tags=TAGS,
    )
    def get(self, request: Request, rule_id: int) -> Response:
        return Response(RuleOutput(_config(rule_id)).data)


class VersionListApi(APIView):
    keyset = Keyset("number", descending=True)

    @extend_schema(
        operation_id="rule_versions_list",
        parameters=[RULE_ID, VersionListInput],
        responses={200: paginated(VersionOutput), **BAD_INPUT_OR_NOT_FOUND},
        tags=TAGS,
        description="A rule's versions, newest first.",
    )
    def get(self, request: Request, rule_id: int) -> Response:
        config = _config(rule_id)
        params = query_input(request, VersionListInput)
        data = params.validated_data
        rows = rule_versions_list(config_id=config.pk).select_related("parent")
        page = keyset_page(rows, keyset=self.keyset, cursor=data.get("cursor"), limit=params.page_limit())
        return page_response(request, page, VersionOutput(page.rows, many=True).data)

    @extend_schema(
        operation_id="rule_versions_create",
        parameters=[RULE_ID],
        request=VersionCreateInput,
        responses={201: VersionOutput, 200: VersionOutput, **BAD_INPUT_OR_NOT_FOUND},
        tags=TAGS,
        description=(
            "Version n+1 of the rule, validated exactly as the admin validates it (rules.services). "
            "201 with the new version; 200 with the newest when spec and symbols are unchanged."
        ),
    )
    def post(self, request: Request, rule_id: int) -> Response:
        config = _config(rule_id)
        data = body_input(request, VersionCreateInput).validated_data
        newest = (
            rule_versions_list(config_id=config.pk)
            .order_by("-number")
            .values_list("number", flat=True)
            .first()
        )
        try:
            version = rule_version_create(
                config=config,
                spec=data["spec"],
                symbols=data["symbols"],
                author=api_actor(request),
                comment=data["comment"],
            )
        except RuleInputError as error:
            raise _rule_input_error(error) from None
        created = version.number != newest
        return Response(
            VersionOutput(version).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class VersionActivateApi(APIView):
    @extend_schema(
        operation_id="rule_versions_activate",
        parameters=[RULE_ID, NUMBER],
        request=None,
        responses={200: RuleOutput, **NOT_FOUND},
        tags=TAGS,
        description="Make this version the one the rule runs, and the rule active (audited).",
    )
    def post(self, request: Request, rule_id: int, number: int) -> Response:
        config = _config(rule_id)
        version = rule_version_get(config_id=config.pk, number=number)
        if version is None:
            raise exceptions.NotFound(f"rule {rule_id} has no version {number}")
        rule_version_activate(version=version, actor=api_actor(request))
        return Response(RuleOutput(_config(rule_id)).data)


class SignalListApi(APIView):
    keyset = Keyset("id", descending=True)

    @extend_schema(
        operation_id="signals_list",
        parameters=[SignalListInput],
        responses={200: paginated(SignalOutput), **BAD_INPUT},
        tags=TAGS,
        description="Signals, newest first.",
    )
    def get(self, request: Request) -> Response:
        params = query_input(request, SignalListInput)
        data = params.validated_data
        symbol_id = _symbol(data.get("exchange"), data["symbol"]).pk if data.get("symbol") else None
        rows = signals_list(
            symbol_id=symbol_id,
            timeframe=data.get("timeframe"),
            config_id=data.get("rule"),
            action=data.get("action"),
            start=data.get("start"),
            end=data.get("end"),
        )
        page = keyset_page(rows, keyset=self.keyset, cursor=data.get("cursor"), limit=params.page_limit())
        return page_response(request, page, SignalOutput(page.rows, many=True).data)


# Defaults of each kind's parameters, and the engine's names of them where they differ.
_DEFAULTS: dict[str, dict[str, int | float]] = {
    "sma": {"period": 20},
    "ema": {"period": 20},
    "rsi": {"period": 14},
    "atr": {"period": 14},
    "adx": {"period": 14},
    "vwap": {},
    "macd": {"fast": 12, "slow": 26, "signal": 9},
    "bbands": {"period": 20, "stddev": 2.0},
    "stoch": {"k_period": 5, "k_smooth": 3, "d_period": 3},
}
_ENGINE_NAMES = {
    "fast_k": "k_period",
    "slow_k": "k_smooth",
    "slow_d": "d_period",
    "up": "stddev",
    "down": "stddev",
}


class IndicatorApi(APIView):
    keyset = Keyset("open_time", kind="time")

    @extend_schema(
        operation_id="indicators_list",
        parameters=[IndicatorInput],
        responses={200: paginated(IndicatorRowOutput), **BAD_INPUT},
        tags=TAGS,
        description=(
            "One indicator over stored candles, computed by the rules engine's implementation (the one "
            "live, dry-run and backtests use), with warm-up history read before the first row."
        ),
    )
    def get(self, request: Request) -> Response:
        data = query_input(request, IndicatorInput).validated_data
        kind = data["kind"]
        params: dict[str, Any] = {name: data.get(name, default) for name, default in _DEFAULTS[kind].items()}
        unused = sorted(
            name
            for name in ("period", "fast", "slow", "signal", "stddev", "k_period", "k_smooth", "d_period")
            if name in data and name not in params
        )
        if unused:
            raise invalid(
                unused[0], f"{kind} takes no {unused[0]}; it takes {', '.join(params) or 'nothing'}"
            )
        try:
            indicator = indicator_for(IndicatorDecl(kind, params))
        except ValueError as error:
            message = str(error)
            # "fast must be shorter than slow" is put on slow, as the spec puts it.
            named = "slow" if "than slow" in message else message.split(" ", 1)[0]
            name = _ENGINE_NAMES.get(named, named)
            raise invalid(name if name in params else "kind", message) from None
        symbol = _symbol(data.get("exchange"), data["symbol"])
        start = data.get("start")
        if data.get("cursor"):
            after = self.keyset.decode(data["cursor"])
            start = max(start, utc_from_ms(after + 1)) if start is not None else utc_from_ms(after + 1)
        limit = int(data.get("limit") or 500)
        rows = indicator_values(
            symbol_id=symbol.pk,
            timeframe=Timeframe(data["timeframe"]),
            kind=kind,
            indicator=indicator,
            start=start,
            end=data.get("end"),
            limit=limit + 1,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        page = Page(rows=rows, next_cursor=self.keyset.encode(rows[-1]) if more else None)
        return page_response(request, page, IndicatorRowOutput(rows, many=True).data)
