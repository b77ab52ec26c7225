"""A request and its answer reach WebSocket, SSE and poll clients of a real daphne."""

from __future__ import annotations

import asyncio
import json

import pytest

from .conftest import (
    COMPLETED_FIELDS,
    REQUIRED_FIELDS,
    api_client,
    assert_timestamp,
    create_request,
    poll,
    running_server,
    sse_connect,
    ws_connect,
    ws_events,
    ws_recv,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def test_request_and_answer_reach_every_transport_of_their_execution_only(
    server, api, api_key, execution_id, other_execution_id
):
    ws = await ws_connect(server, execution_id, token=api_key)
    other_ws = await ws_connect(server, other_execution_id, token=api_key)
    async with sse_connect(server, execution_id, token=api_key) as sse:
        assert sse.response.headers["content-type"] == "text/event-stream"
        assert sse.response.headers["cache-control"] == "no-cache"
        assert sse.response.headers["x-accel-buffering"] == "no"
        assert await sse.next_message() == {"retry": "3000"}

        request = await create_request(
            api,
            execution_id,
            prompt="Ship it?",
            context="release 1.2",
            crew_id="crew-1",
            task_id="task-1",
            agent_id="agent-1",
            reason_flags={"ambiguity": True},
        )
        required_ws = await ws_recv(ws)
        required_sse = await sse.next_event()
        assert required_ws == required_sse
        assert set(required_ws) == REQUIRED_FIELDS
        assert required_ws == {
            **required_ws,
            "type": "human_input_required",
            "execution_id": execution_id,
            "crew_id": "crew-1",
            "task_id": "task-1",
            "agent_id": "agent-1",
            "prompt": "Ship it?",
            "context": "release 1.2",
            "reason_flags": {"ambiguity": True, "missing_field": False},
            "request_id": request["id"],
            "sequence": 1,
        }
        assert_timestamp(required_ws["timestamp"])

        # The answer goes through the server, over the same socket.
        await ws.send(json.dumps({"type": "respond", "request_id": request["id"], "response": "Yes"}))
        completed_ws = await ws_recv(ws)
        completed_sse = await sse.next_event()
        assert completed_ws == completed_sse
        assert set(completed_ws) == COMPLETED_FIELDS
        assert completed_ws["type"] == "human_input_completed"
        assert completed_ws["human_feedback"] == "Yes"
        assert completed_ws["request_id"] == request["id"]
        assert completed_ws["sequence"] == 2
        assert completed_ws["event_id"] != required_ws["event_id"]
        assert_timestamp(completed_ws["timestamp"])

    body = (await poll(server, execution_id, token=api_key)).json()
    assert body["events"] == [required_ws, completed_ws]
    assert body["last_event_id"] == completed_ws["event_id"]

    # The other execution saw none of it: its first frame is its own event.
    other = await create_request(api, other_execution_id, prompt="Other?")
    first = await ws_recv(other_ws)
    assert (first["request_id"], first["sequence"]) == (other["id"], 1)
    assert (await poll(server, other_execution_id, token=api_key)).json()["events"] == [first]
    await ws.close()
    await other_ws.close()


async def test_answer_over_websocket_rings_other_subscribers_without_catch_up(
    tmp_path, api_key, execution_id
):
    """With catch-up effectively off, delivery of a server-side write can only be the doorbell."""
    with running_server(tmp_path, HUMANINPUT_CATCHUP_SECONDS="3600") as quiet_server:
        async with api_client(quiet_server, api_key) as quiet_api:
            request = await create_request(quiet_api, execution_id, prompt="Deploy?")
        watcher = await ws_connect(quiet_server, execution_id, token=api_key)
        answerer = await ws_connect(quiet_server, execution_id, token=api_key)
        async with sse_connect(quiet_server, execution_id, token=api_key) as sse:
            first = await ws_recv(watcher)
            assert first["sequence"] == 1
            assert (await ws_recv(answerer))["sequence"] == 1
            assert (await sse.next_event())["sequence"] == 1
            long_poll = asyncio.create_task(
                poll(quiet_server, execution_id, token=api_key, last_event_id=first["event_id"], wait="20")
            )
            await answerer.send(
                json.dumps({"type": "respond", "request_id": request["id"], "response": "go"})
            )
            for received in (await ws_recv(watcher), await ws_recv(answerer), await sse.next_event()):
                assert (received["type"], received["sequence"]) == ("human_input_completed", 2)
        await watcher.close()
        await answerer.close()
        body = (await asyncio.wait_for(long_poll, timeout=15)).json()
        assert [e["sequence"] for e in body["events"]] == [2]


async def test_long_poll_returns_when_an_answer_arrives(server, api, api_key, execution_id):
    request = await create_request(api, execution_id, prompt="Now?")
    first = (await poll(server, execution_id, token=api_key)).json()
    waiting = asyncio.create_task(
        poll(server, execution_id, token=api_key, last_event_id=first["last_event_id"], wait="30")
    )
    answerer = await ws_connect(server, execution_id, token=api_key)
    await ws_events(answerer, 1)
    await answerer.send(json.dumps({"type": "respond", "request_id": request["id"], "response": "ok"}))
    body = (await asyncio.wait_for(waiting, timeout=25)).json()
    assert [e["type"] for e in body["events"]] == ["human_input_completed"]
    assert body["last_event_id"] == body["events"][0]["event_id"]
    await answerer.close()


async def test_long_poll_with_nothing_new_returns_empty_at_the_deadline(server, api, api_key, execution_id):
    await create_request(api, execution_id, prompt="Quiet?")
    first = (await poll(server, execution_id, token=api_key)).json()
    response = await poll(server, execution_id, token=api_key, last_event_id=first["last_event_id"], wait="1")
    assert response.status_code == 200
    assert response.json() == {"events": [], "last_event_id": first["last_event_id"]}
