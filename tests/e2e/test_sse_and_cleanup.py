"""SSE keeps idle streams alive; clients that vanish leave nothing behind."""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest
import redis.asyncio as aioredis

import harness.redis
from events_app.events import format_timestamp, group_name

from ..conftest import eventually
from .conftest import CATCH_UP_SECONDS, running_server, sse_connect, ws_connect

# Membership of a group held by another process is visible only in Redis, so
# this test always runs its own Redis-backed daphne (Redis is on every machine).
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def test_idle_sse_stream_gets_heartbeats_without_ids(server, api_key, execution_id):
    async with sse_connect(server, execution_id, token=api_key) as sse:
        assert await sse.next_message() == {"retry": "3000"}
        for _ in range(2):
            beat = await sse.next_message(deadline=5)
            assert set(beat) == {"data"}  # no id: heartbeats are not resumable events
            data = json.loads(beat["data"])
            assert data["type"] == "heartbeat"
            assert set(data) == {"type", "timestamp"}
            assert data["timestamp"] == format_timestamp(datetime.fromisoformat(data["timestamp"]))


async def group_members(client: aioredis.Redis, layer: str, execution_id: str) -> int:
    return await harness.redis.group_members(client, group_name(execution_id), layer)


async def wait_for_members(client: aioredis.Redis, layer: str, execution_id: str, expected: int) -> int:
    """Membership is held in Redis by the daphne process: re-read it until it is ``expected``."""
    return await eventually(
        lambda: group_members(client, layer, execution_id),
        accept=lambda members: members == expected,
        deadline=10,
        what=f"{expected} member(s) in the group of {execution_id}",
    )


@pytest.mark.parametrize("layer", ["core", "pubsub"])
async def test_vanished_clients_give_their_group_membership_back(
    tmp_path, api_key, execution_id, other_execution_id, layer
):
    client = harness.redis.async_client(TEST_REDIS_URL)
    env = {"REDIS_URL": TEST_REDIS_URL, "REDIS_CHANNEL_LAYER": layer}
    with running_server(tmp_path, HUMANINPUT_CATCHUP_SECONDS=CATCH_UP_SECONDS, **env) as server:
        ws = await ws_connect(server, execution_id, token=api_key)
        async with sse_connect(server, other_execution_id, token=api_key) as sse:
            await sse.next_message()
            assert await wait_for_members(client, layer, execution_id, 1) == 1
            assert await wait_for_members(client, layer, other_execution_id, 1) == 1
        # The SSE client hung up mid-stream.
        assert await wait_for_members(client, layer, other_execution_id, 0) == 0
        assert await group_members(client, layer, execution_id) == 1
        ws.transport.abort()  # the WebSocket client vanishes without a close frame
        assert await wait_for_members(client, layer, execution_id, 0) == 0
    await client.aclose()
