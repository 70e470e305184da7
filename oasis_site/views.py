from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from oasis_site.health import readiness_checks


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Touches no dependency, so it never flaps with them."""
    return JsonResponse({"status": "alive"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 when every component is ready, else 503 naming the failing ones."""
    results = readiness_checks()
    failing = [result.component for result in results if not result.ok]
    body = {
        "status": "unavailable" if failing else "ready",
        "failing": failing,
        "checks": {result.component: result.as_dict() for result in results},
    }
    return JsonResponse(body, status=503 if failing else 200)
