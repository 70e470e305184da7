from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from oasis_site import __version__
from oasis_site.broadcast import RELAY_SIGNATURE_HEADER, RelayError, layer_broadcast_many, relay_events_parse
from oasis_site.health import readiness_checks
from oasis_site.shutdown import draining


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers, and which release it runs (so a deploy or a rollback can
    be seen to have taken). Touches no dependency, so it never flaps with them."""
    return JsonResponse({"status": "alive", "version": __version__})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 when every component is ready, else 503 naming the failing ones; 503
    "draining" once the server has begun its graceful stop (oasis_site/shutdown.py)."""
    if draining():
        return JsonResponse({"status": "draining", "failing": ["shutdown"], "checks": {}}, status=503)
    results = readiness_checks()
    failing = [result.component for result in results if not result.ok]
    body = {
        "status": "unavailable" if failing else "ready",
        "failing": failing,
        "checks": {result.component: result.as_dict() for result in results},
    }
    return JsonResponse(body, status=503 if failing else 200)


RELAY_CLIENTS = {"127.0.0.1", "::1"}


@csrf_exempt
@require_POST
def broadcast_relay(request: HttpRequest) -> HttpResponse:
    """Broadcasts posted by this machine's other processes when no Redis carries them
    (`oasis_site.broadcast`): loopback only, signed with a key derived from SECRET_KEY."""
    if request.META.get("REMOTE_ADDR") not in RELAY_CLIENTS:
        return JsonResponse({"error": "the broadcast relay only accepts loopback clients"}, status=403)
    try:
        events = relay_events_parse(request.body, request.headers.get(RELAY_SIGNATURE_HEADER, ""))
    except RelayError as error:
        return JsonResponse({"error": str(error)}, status=400)
    layer_broadcast_many(events)
    return JsonResponse({"relayed": len(events)})
