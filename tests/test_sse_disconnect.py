"""An SSE client that disconnects frees its task and its group membership (in-process ASGI)."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.core.asgi import get_asgi_application

from events_app.events import group_name

from .conftest import asgi_http_scope

# layer_ready: the layer's own long-lived reader (pub/sub) starts before the count of tasks.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("layer_ready")]


async def group_members(execution_id: str) -> int:
    """Channels in the execution's group: in this process (in-memory, pub/sub) or in Redis (core)."""
    layer = get_channel_layer()
    group = group_name(execution_id)
    if isinstance(layer, InMemoryChannelLayer):
        return len(layer.groups.get(group, {}))
    if isinstance(layer, RedisPubSubChannelLayer):
        loop_layer = layer._get_layer()
        return len(loop_layer.groups.get(loop_layer._get_group_channel_name(group), ()))
    async with layer.connection(layer.consistent_hash(group)) as connection:
        return await connection.zcard(layer._group_key(group))


async def test_sse_disconnect_cancels_the_stream_and_leaves_the_group(api_key, execution_id, settings):
    # The stream joins its group, reads the log, then sends its first heartbeat:
    # receiving that heartbeat proves the membership exists, with no polling.
    settings.HUMANINPUT_SSE_HEARTBEAT_SECONDS = 0.05
    # The process-wide expiry task (started by the first request) is not the stream's to leave.
    settings.HUMANINPUT_EXPIRY_INTERVAL_SECONDS = 0
    app = get_asgi_application()
    inbound: asyncio.Queue[dict] = asyncio.Queue()
    outbound: asyncio.Queue[dict] = asyncio.Queue()
    scope = asgi_http_scope(f"/events/human-input/{execution_id}", query=f"token={api_key}")
    tasks_before = asyncio.all_tasks()
    await inbound.put({"type": "http.request", "body": b"", "more_body": False})
    request = asyncio.create_task(app(scope, inbound.get, outbound.put))

    start = await asyncio.wait_for(outbound.get(), 5)
    assert (start["type"], start["status"]) == ("http.response.start", 200)
    first = await asyncio.wait_for(outbound.get(), 5)
    assert first["body"] == b"retry: 3000\n\n"
    heartbeat = await asyncio.wait_for(outbound.get(), 5)
    assert b'"type": "heartbeat"' in heartbeat["body"]
    assert await group_members(execution_id) == 1

    await inbound.put({"type": "http.disconnect"})
    await asyncio.wait_for(request, 5)  # leaving the group is awaited before the view ends

    assert await group_members(execution_id) == 0
    leftover = {task for task in asyncio.all_tasks() - tasks_before if not task.done()}
    leftover.discard(asyncio.current_task())
    assert leftover == set()
