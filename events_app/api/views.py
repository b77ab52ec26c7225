"""Polling and health, as async DRF views (adrf), so a long poll holds no thread."""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework.request import Request
from rest_framework.response import Response

from ..auth import READ, authorize
from ..conf import humaninput_settings
from ..events import format_timestamp
from ..http import query_value
from ..log import (
    aevents_after_cursor,
    aresolve_cursor,
    parse_bounded_number,
    parse_cursor,
    validate_execution_id,
)
from ..subscription import ExecutionSubscription
from .base import AsyncHumanInputAPIView, document
from .schema import CURSOR_SCHEMA, EXECUTION_ID_SCHEMA, or_empty
from .serializers import ErrorOutput, HealthOutput, PollOutput

logger = logging.getLogger(__name__)


class PollView(AsyncHumanInputAPIView):
    """``GET /poll/human-input/<execution_id>``: the events past ``last_event_id``.

    ``?limit=`` caps the page (oldest first); ``?wait=`` seconds turns it into
    a long poll that answers as soon as an event exists past the cursor.
    """

    @document(
        operation_id="human_input_events_poll",
        tags=["events"],
        parameters=[
            OpenApiParameter("execution_id", EXECUTION_ID_SCHEMA, OpenApiParameter.PATH),
            OpenApiParameter("last_event_id", CURSOR_SCHEMA),
            # The bounds this process enforces (its settings when the module loads).
            OpenApiParameter(
                "limit",
                or_empty({"type": "integer", "minimum": 1, "maximum": humaninput_settings.POLL_MAX_LIMIT}),
                description=f"Default (or empty): {humaninput_settings.POLL_DEFAULT_LIMIT}; oldest first.",
            ),
            OpenApiParameter(
                "wait",
                or_empty(
                    {"type": "number", "minimum": 0, "maximum": humaninput_settings.POLL_MAX_WAIT_SECONDS}
                ),
                description="Seconds to wait for an event past the cursor (long poll); default (or empty) 0.",
            ),
        ],
        responses={
            200: PollOutput,
            400: OpenApiResponse(ErrorOutput, description="Invalid execution id, cursor, limit or wait."),
            401: OpenApiResponse(ErrorOutput, description="Missing or invalid credentials."),
            403: OpenApiResponse(ErrorOutput, description="Credentials not valid for this execution."),
        },
    )
    async def get(self, request: Request, execution_id: str) -> Response:
        execution_id = validate_execution_id(execution_id)
        authorize(request.auth, execution_id=execution_id, scope=READ)
        params = request.query_params
        cursor = parse_cursor(query_value(params, "last_event_id"))
        limit = int(
            parse_bounded_number(
                query_value(params, "limit"),
                name="limit",
                default=humaninput_settings.POLL_DEFAULT_LIMIT,
                minimum=1,
                maximum=humaninput_settings.POLL_MAX_LIMIT,
                integer=True,
            )
        )
        wait = parse_bounded_number(
            query_value(params, "wait"),
            name="wait",
            default=0,
            minimum=0,
            maximum=humaninput_settings.POLL_MAX_WAIT_SECONDS,
            integer=False,
        )
        if wait <= 0:
            after, events = await aevents_after_cursor(execution_id=execution_id, cursor=cursor, limit=limit)
        else:
            after = await aresolve_cursor(execution_id=execution_id, cursor=cursor)
            async with ExecutionSubscription(
                execution_id=execution_id,
                after_sequence=after,
                transport="poll",
                max_read=limit,
                token_id=request.auth.token_id,
            ) as subscription:
                events = await subscription.read_log() or await subscription.next_events(wait)
        if events:
            last_event_id: str | None = events[-1]["event_id"]
        else:
            last_event_id = str(cursor) if cursor is not None and after else None
        return Response({"events": events, "last_event_id": last_event_id})


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
