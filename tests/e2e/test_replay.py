"""Late joiners get the whole log; reconnecting clients get exactly what they missed."""

from __future__ import annotations

import httpx
import pytest

from .conftest import create_request, poll, respond, sse_connect, ws_connect, ws_events

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def write_log(api: httpx.AsyncClient, execution_id: str, count: int) -> None:
    """``count`` requests through the server, every other one answered: a log of mixed event types."""
    for index in range(count):
        request = await create_request(api, execution_id, prompt=f"question {index}")
        if index % 2:
            assert (await respond(api, request["id"], f"answer {index}")).status_code == 200


async def test_a_late_websocket_client_gets_the_whole_log_in_order(server, api, api_key, execution_id):
    await write_log(api, execution_id, 4)  # 4 required + 2 completed
    ws = await ws_connect(server, execution_id, token=api_key)
    events = await ws_events(ws, 6)
    assert [e["sequence"] for e in events] == [1, 2, 3, 4, 5, 6]
    await ws.close()


async def resume_ws(server, api_key, execution_id, cursor, count):
    ws = await ws_connect(server, execution_id, token=api_key, last_event_id=cursor)
    events = await ws_events(ws, count)
    await ws.close()
    return events


async def resume_sse_header(server, api_key, execution_id, cursor, count):
    async with sse_connect(server, execution_id, headers={"Last-Event-ID": cursor}, token=api_key) as sse:
        return await sse.events(count)


async def resume_sse_query(server, api_key, execution_id, cursor, count):
    async with sse_connect(server, execution_id, token=api_key, last_event_id=cursor) as sse:
        return await sse.events(count)


async def resume_poll(server, api_key, execution_id, cursor, count):
    body = (await poll(server, execution_id, token=api_key, last_event_id=cursor)).json()
    assert body["last_event_id"] == body["events"][-1]["event_id"]
    return body["events"]


RESUMERS = {
    "ws-query": resume_ws,
    "sse-header": resume_sse_header,
    "sse-query": resume_sse_query,
    "poll-query": resume_poll,
}


@pytest.mark.parametrize("how", RESUMERS)
async def test_a_client_resuming_from_its_cursor_gets_exactly_the_missed_events(
    server, api, api_key, execution_id, how
):
    await write_log(api, execution_id, 2)  # sequences 1..3
    full = (await poll(server, execution_id, token=api_key)).json()["events"]
    cursor = full[-1]["event_id"]
    await write_log(api, execution_id, 4)  # sequences 4..9, written "while away"
    missed = await RESUMERS[how](server, api_key, execution_id, cursor, 6)
    assert [e["sequence"] for e in missed] == [4, 5, 6, 7, 8, 9]
    assert len({e["event_id"] for e in missed}) == 6
    everything = (await poll(server, execution_id, token=api_key, limit="1000")).json()["events"]
    assert full + missed == everything


async def test_after_resuming_the_next_frame_is_a_new_event_not_a_duplicate(
    server, api, api_key, execution_id
):
    await write_log(api, execution_id, 2)
    cursor = (await poll(server, execution_id, token=api_key)).json()["last_event_id"]
    ws = await ws_connect(server, execution_id, token=api_key, last_event_id=cursor)
    await write_log(api, execution_id, 1)
    (fresh,) = await ws_events(ws, 1)
    assert fresh["sequence"] == 4
    await ws.close()


@pytest.mark.parametrize("how", RESUMERS)
async def test_an_unknown_well_formed_cursor_replays_the_whole_log(server, api, api_key, execution_id, how):
    await write_log(api, execution_id, 2)
    events = await RESUMERS[how](server, api_key, execution_id, "00000000-0000-4000-8000-000000000000", 3)
    assert [e["sequence"] for e in events] == [1, 2, 3]


async def test_poll_pages_with_limit_oldest_first(server, api, api_key, execution_id):
    await write_log(api, execution_id, 4)  # 6 events
    first = (await poll(server, execution_id, token=api_key, limit="4")).json()
    second = (
        await poll(server, execution_id, token=api_key, limit="4", last_event_id=first["last_event_id"])
    ).json()
    assert [e["sequence"] for e in first["events"]] == [1, 2, 3, 4]
    assert [e["sequence"] for e in second["events"]] == [5, 6]
