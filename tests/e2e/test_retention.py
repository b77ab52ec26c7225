"""After a prune, a client resuming from a cursor whose event is gone gets the whole retained log.

That is the spec's rule for a well-formed but unknown cursor; the sequence
continues where the pruned log ended, so a client that dedupes by ``sequence``
or ``event_id`` never confuses new events with old ones. Writes of the log
being pruned go through the server (REST); only the clock is moved here.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async

from events_app import retention

from ..test_retention import backdate
from .conftest import DEADLINE, REQUESTS, ROOT, poll, sse_connect, ws_connect, ws_events

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MONTH = timedelta(days=30)


async def ask_and_answer(api, execution_id: str, *, answer: bool = True) -> None:
    created = await api.post(REQUESTS, json={"execution_id": execution_id, "prompt": "Ship it?"})
    assert created.status_code == 201, created.text
    if answer:
        responded = await api.post(f"{REQUESTS}/{created.json()['id']}/respond", json={"response": "yes"})
        assert responded.status_code == 200, responded.text


@database_sync_to_async
def age_execution(execution_id: str) -> None:
    backdate(execution_id, by=MONTH + timedelta(days=1))


@database_sync_to_async
def prune() -> retention.PruneResult:
    return retention.prune_executions(older_than=MONTH)


async def pruned_cursor(server, api, api_key, execution_id) -> str:
    """A finished execution's log (sequences 1..4) pruned; the cursor a client held at its end."""
    for _ in range(2):
        await ask_and_answer(api, execution_id)
    body = (await poll(server, execution_id, token=api_key)).json()
    assert [event["sequence"] for event in body["events"]] == [1, 2, 3, 4]
    await age_execution(execution_id)
    result = await prune()
    assert (result.executions, result.requests, result.events) == (1, 2, 4)
    return body["last_event_id"]


@pytest.mark.parametrize("transport", ["poll", "sse", "ws"])
async def test_a_client_resuming_from_a_pruned_cursor_gets_the_whole_retained_log_then_live_events(
    server, api, api_key, execution_id, transport
):
    cursor = await pruned_cursor(server, api, api_key, execution_id)
    await ask_and_answer(api, execution_id)  # the retained log: sequences 5 and 6
    if transport == "poll":
        body = (await poll(server, execution_id, token=api_key, last_event_id=cursor)).json()
        replayed = body["events"]
        await ask_and_answer(api, execution_id, answer=False)
        later = await poll(server, execution_id, token=api_key, last_event_id=body["last_event_id"])
        live = later.json()["events"]
    elif transport == "sse":
        async with sse_connect(server, execution_id, headers={"Last-Event-ID": cursor}, token=api_key) as sse:
            replayed = await sse.events(2)
            await ask_and_answer(api, execution_id, answer=False)
            live = await sse.events(1)
    else:
        ws = await ws_connect(server, execution_id, token=api_key, last_event_id=cursor)
        try:
            replayed = await ws_events(ws, 2)
            await ask_and_answer(api, execution_id, answer=False)
            live = await ws_events(ws, 1)
        finally:
            await ws.close()
    assert [event["sequence"] for event in replayed] == [5, 6]
    assert [event["type"] for event in replayed] == ["human_input_required", "human_input_completed"]
    assert [event["sequence"] for event in live] == [7]
    assert cursor not in {event["event_id"] for event in replayed + live}


async def test_a_pruned_cursor_with_nothing_retained_polls_empty_not_an_error(
    server, api, api_key, execution_id
):
    cursor = await pruned_cursor(server, api, api_key, execution_id)
    response = await poll(server, execution_id, token=api_key, last_event_id=cursor)
    assert response.status_code == 200
    assert response.json() == {"events": [], "last_event_id": None}


async def test_the_prune_command_deletes_what_the_server_wrote(server, api, api_key, execution_id):
    await ask_and_answer(api, execution_id)
    await age_execution(execution_id)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "manage.py",
        "humaninput_prune",
        "--older-than=30d",
        cwd=ROOT,
        env=server.environment(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), DEADLINE)
    assert process.returncode == 0, err.decode()
    assert out.decode().startswith("Deleted 1 execution(s): 1 request(s), 2 event(s)")
    assert "pruned batch 1: 1 execution(s)" in err.decode()  # the events_app log, on stderr
    assert (await poll(server, execution_id, token=api_key)).json()["events"] == []
    await ask_and_answer(api, execution_id, answer=False)
    (event,) = (await poll(server, execution_id, token=api_key)).json()["events"]
    assert event["sequence"] == 3
