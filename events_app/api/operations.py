"""Operating the service: ``GET /health`` for load balancers, ``GET /metrics`` for Prometheus."""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from rest_framework.request import Request
from rest_framework.response import Response

from ..auth import Credentials, authenticate
from ..events import format_timestamp
from ..exceptions import HumanInputError, PermissionDenied
from ..http import error_response
from .base import AsyncHumanInputAPIView, document
from .serializers import HealthOutput

logger = logging.getLogger(__name__)


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


class _HealthChannel:
    """One channel per layer that every health check of the process sends itself a message on.

    A new channel per check would leak: the pub/sub layer unsubscribes a
    channel only when a ``receive`` on it is cancelled. The lock keeps two
    concurrent checks from reading each other's message.
    """

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.name: str | None = None


_health_channels: weakref.WeakKeyDictionary[Any, _HealthChannel] = weakref.WeakKeyDictionary()


async def _check_channel_layer() -> None:
    layer: Any = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    health = _health_channels.setdefault(layer, _HealthChannel())
    async with health.lock:
        if health.name is None:
            health.name = await layer.new_channel()
        token = uuid.uuid4().hex
        try:
            await layer.send(health.name, {"type": "health.check", "token": token})
            while (await layer.receive(health.name)).get("token") != token:
                continue  # a check that failed earlier left its message behind
        except BaseException:
            # A cancelled receive unsubscribes the channel (pub/sub): start afresh next time.
            health.name = None
            raise


class HealthView(AsyncHumanInputAPIView):
    """``GET /health``: 200 if the database and the channel layer answer, else 503."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []

    @document(
        operation_id="health",
        tags=["health"],
        auth=[],
        responses={200: HealthOutput, 503: HealthOutput},
    )
    async def get(self, request: Request) -> Response:
        checks = {
            "database": await self._run(sync_to_async(_check_database)(), "database"),
            "channel_layer": await self._run(_check_channel_layer(), "channel_layer"),
        }
        healthy = all(result == "ok" for result in checks.values())
        body = {
            "status": "healthy" if healthy else "unhealthy",
            "timestamp": format_timestamp(timezone.now()),
            "checks": checks,
        }
        return Response(body, status=200 if healthy else 503)

    @staticmethod
    async def _run(check: Any, name: str) -> str:
        try:
            await asyncio.wait_for(check, timeout=3)
        except Exception as error:
            logger.warning("health check %s failed: %r", name, error)
            return f"error: {type(error).__name__}"
        return "ok"


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: this process's metrics in the Prometheus text format.

    Takes the API key, a staff session, or ``HUMANINPUT_METRICS_TOKEN`` (a
    token that opens this page and nothing else, for the scraper's configuration).
    """
    try:
        if not authenticate(Credentials.of_request(request), metrics=True).may_read_metrics:
            raise PermissionDenied("Metrics need the API key, the metrics token or a staff session.")
    except HumanInputError as error:
        return error_response(error)
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
