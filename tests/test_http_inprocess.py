"""Polling, health and SSE, in process: Django's ``AsyncClient`` and an ASGI communicator.

The end-to-end suite runs the same transports against a real daphne; these
tests pin the behaviour of each parameter quickly and on both databases.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth.models import User
from django.test import AsyncClient, override_settings

from events_app import services, signals
from events_app.api import operations
from events_app.auth import READ, issue_token
from events_app.events import group_name
from events_app.models import EventType, HumanInputEvent
from events_app.streaming.subscription import ExecutionSubscription
from humaninput_project.asgi import application

from .conftest import asgi_http_scope

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("own_channel_layer", "layer_ready", "close_view_connections"),
]

TIMEOUT = 5
UTC_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$")

create_request = database_sync_to_async(services.request_create)


@pytest.fixture
def client() -> AsyncClient:
    return AsyncClient()


@pytest.fixture
def bearer(api_key) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def poll_url(execution_id: str) -> str:
    return f"/poll/human-input/{execution_id}"


async def stored_payloads(execution_id: str) -> list[dict]:
    query = HumanInputEvent.objects.filter(execution_id=execution_id).order_by("sequence")
    return [event.payload async for event in query]


@database_sync_to_async
def insert_log(execution_id: str, count: int) -> list[str]:
    """``count`` log rows for ``execution_id`` written in one statement; returns their event ids."""
    request = services.request_create(execution_id=f"{execution_id}-owner", prompt="?")
    rows = []
    for sequence in range(1, count + 1):
        event_id = uuid.uuid4()
        payload = {
            "type": EventType.REQUIRED,
            "execution_id": execution_id,
            "event_id": str(event_id),
            "request_id": str(request.id),
            "sequence": sequence,
        }
        rows.append(
            HumanInputEvent(
                event_id=event_id,
                execution_id=execution_id,
                sequence=sequence,
                type=EventType.REQUIRED,
                payload=payload,
                request=request,
            )
        )
    HumanInputEvent.objects.bulk_create(rows)
    return [str(row.event_id) for row in rows]


# --- polling -----------------------------------------------------------------------


async def test_poll_returns_the_log_and_the_last_event_id(client, bearer, execution_id):
    for prompt in ("one", "two"):
        await create_request(execution_id=execution_id, prompt=prompt)
    response = await client.get(poll_url(execution_id), headers=bearer)
    assert response.status_code == 200
    stored = await stored_payloads(execution_id)
    assert response.json() == {"events": stored, "last_event_id": stored[-1]["event_id"]}


async def test_poll_of_an_empty_execution_is_empty_with_no_cursor(client, bearer, execution_id):
    response = await client.get(poll_url(execution_id), headers=bearer)
    assert response.json() == {"events": [], "last_event_id": None}


async def test_poll_limit_defaults_to_100_oldest_first(client, bearer, execution_id):
    event_ids = await insert_log(execution_id, 101)
    body = (await client.get(poll_url(execution_id), headers=bearer)).json()
    assert [e["sequence"] for e in body["events"]] == list(range(1, 101))
    assert body["last_event_id"] == event_ids[99]


async def test_poll_limit_of_1000_is_allowed(client, bearer, execution_id):
    await insert_log(execution_id, 1001)
    response = await client.get(poll_url(execution_id), {"limit": "1000"}, headers=bearer)
    assert response.status_code == 200
    assert len(response.json()["events"]) == 1000


async def test_poll_limit_keeps_the_oldest_events(client, bearer, execution_id):
    await insert_log(execution_id, 3)
    body = (await client.get(poll_url(execution_id), {"limit": "2"}, headers=bearer)).json()
    assert [e["sequence"] for e in body["events"]] == [1, 2]


@pytest.mark.parametrize("limit", ["0", "1001", "abc", "-1", "2.5"])
async def test_poll_invalid_limit_is_a_400(client, bearer, execution_id, limit):
    response = await client.get(poll_url(execution_id), {"limit": limit}, headers=bearer)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_parameter"
    assert response.json()["field"] == "limit"


@pytest.mark.parametrize("wait", ["-1", "31", "nan", "inf", "abc"])
async def test_poll_invalid_wait_is_a_400(client, bearer, execution_id, wait):
    response = await client.get(poll_url(execution_id), {"wait": wait}, headers=bearer)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_parameter"
    assert response.json()["field"] == "wait"


@pytest.mark.parametrize("cursor", ["nope", "1234", "x" * 37])
async def test_poll_malformed_cursor_is_a_400(client, bearer, execution_id, cursor):
    response = await client.get(poll_url(execution_id), {"last_event_id": cursor}, headers=bearer)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_cursor"


async def test_poll_known_cursor_returns_only_later_events(client, bearer, execution_id):
    event_ids = await insert_log(execution_id, 4)
    response = await client.get(poll_url(execution_id), {"last_event_id": event_ids[1]}, headers=bearer)
    body = response.json()
    assert [e["event_id"] for e in body["events"]] == event_ids[2:]
    assert body["last_event_id"] == event_ids[3]


async def test_poll_known_cursor_at_the_end_returns_nothing_and_keeps_the_cursor(
    client, bearer, execution_id
):
    event_ids = await insert_log(execution_id, 2)
    response = await client.get(poll_url(execution_id), {"last_event_id": event_ids[1]}, headers=bearer)
    assert response.json() == {"events": [], "last_event_id": event_ids[1]}


async def test_poll_unknown_cursor_returns_the_whole_log(client, bearer, execution_id):
    event_ids = await insert_log(execution_id, 3)
    response = await client.get(poll_url(execution_id), {"last_event_id": str(uuid.uuid4())}, headers=bearer)
    assert [e["event_id"] for e in response.json()["events"]] == event_ids


@pytest.mark.parametrize(
    "bad_id",
    ["a$b", "x" * 129, "a/b", "has%20space", "caf%C3%A9"],
    ids=["dollar", "long", "slash", "space", "utf8"],
)
async def test_poll_invalid_execution_id_is_a_400(client, bearer, bad_id):
    response = await client.get(poll_url(bad_id), headers=bearer)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_execution_id"


async def test_poll_without_token_is_a_401_naming_the_scheme(client, execution_id):
    response = await client.get(poll_url(execution_id))
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "headers,query",
    [
        ({"Authorization": "Bearer wrong"}, {}),
        ({"Authorization": "Bearer caf\xe9"}, {}),
        ({}, {"token": "wrong"}),
        ({}, {"token": "café"}),
        ({}, {"token": "x" * 5000}),
    ],
    ids=["header", "header-latin1", "query", "query-non-ascii", "query-long"],
)
async def test_poll_with_a_wrong_token_is_a_401_json(client, execution_id, headers, query):
    response = await client.get(poll_url(execution_id), query, headers=headers)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert "code" in response.json()
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_poll_accepts_the_bearer_header(client, bearer, execution_id):
    response = await client.get(poll_url(execution_id), headers=bearer)
    assert response.status_code == 200


async def test_poll_accepts_the_query_token(client, api_key, execution_id):
    response = await client.get(poll_url(execution_id), {"token": api_key})
    assert response.status_code == 200


async def test_poll_accepts_a_read_token_for_its_execution(client, execution_id):
    token, _ = issue_token(execution_id=execution_id, scope=READ)
    response = await client.get(poll_url(execution_id), {"token": token})
    assert response.status_code == 200


async def test_poll_with_a_token_of_another_execution_is_a_403(client, execution_id, other_execution_id):
    token, _ = issue_token(execution_id=other_execution_id, scope=READ)
    response = await client.get(poll_url(execution_id), headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


async def test_poll_accepts_a_staff_session(client, execution_id):
    user = await User.objects.acreate(username="staff", is_staff=True)
    await client.aforce_login(user)
    response = await client.get(poll_url(execution_id))
    assert response.status_code == 200


# --- long polling --------------------------------------------------------------------


@pytest.fixture
def poll_is_waiting(monkeypatch) -> asyncio.Event:
    """Set once a long poll has read the log and started waiting for the next event."""
    waiting = asyncio.Event()
    next_events = ExecutionSubscription.next_events

    async def signalling_next_events(self, max_wait):
        waiting.set()
        return await next_events(self, max_wait)

    monkeypatch.setattr(ExecutionSubscription, "next_events", signalling_next_events)
    return waiting


@override_settings(HUMANINPUT_CATCHUP_SECONDS=60)
async def test_long_poll_returns_as_soon_as_an_event_is_written(
    client, bearer, execution_id, poll_is_waiting
):
    loop = asyncio.get_running_loop()
    poll = asyncio.create_task(client.get(poll_url(execution_id), {"wait": "5"}, headers=bearer))
    await asyncio.wait_for(poll_is_waiting.wait(), timeout=TIMEOUT)
    request = await create_request(execution_id=execution_id, prompt="now")
    written = loop.time()
    response = await asyncio.wait_for(poll, timeout=10)
    assert loop.time() - written < 2, "the poll answered at its deadline, not when the event was written"
    assert [e["request_id"] for e in response.json()["events"]] == [str(request.id)]


@override_settings(HUMANINPUT_CATCHUP_SECONDS=0.2)
async def test_long_poll_finds_an_event_whose_announcement_was_lost(
    client, bearer, execution_id, poll_is_waiting, monkeypatch
):
    class DroppingLayer:
        async def group_send(self, group, message):
            pass

    monkeypatch.setattr(signals, "get_channel_layer", DroppingLayer)
    loop = asyncio.get_running_loop()
    poll = asyncio.create_task(client.get(poll_url(execution_id), {"wait": "20"}, headers=bearer))
    await asyncio.wait_for(poll_is_waiting.wait(), timeout=TIMEOUT)
    request = await create_request(execution_id=execution_id, prompt="unannounced")
    written = loop.time()
    response = await asyncio.wait_for(poll, timeout=30)
    assert loop.time() - written < 5
    assert [e["request_id"] for e in response.json()["events"]] == [str(request.id)]


async def test_long_poll_with_events_past_the_cursor_returns_at_once(client, bearer, execution_id):
    await insert_log(execution_id, 2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.get(poll_url(execution_id), {"wait": "10"}, headers=bearer)
    assert loop.time() - started < 3
    assert len(response.json()["events"]) == 2


async def test_long_poll_with_nothing_new_returns_empty_at_its_deadline(client, bearer, execution_id):
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.get(poll_url(execution_id), {"wait": "0.3"}, headers=bearer)
    elapsed = loop.time() - started
    assert response.json() == {"events": [], "last_event_id": None}
    assert 0.29 <= elapsed < 3


async def test_long_poll_ignores_other_executions(
    client, bearer, execution_id, other_execution_id, poll_is_waiting
):
    poll = asyncio.create_task(client.get(poll_url(execution_id), {"wait": "0.5"}, headers=bearer))
    await asyncio.wait_for(poll_is_waiting.wait(), timeout=TIMEOUT)
    await create_request(execution_id=other_execution_id, prompt="elsewhere")
    response = await asyncio.wait_for(poll, timeout=10)
    assert response.json()["events"] == []


# --- health --------------------------------------------------------------------------


async def test_health_is_200_with_every_check_ok(client):
    response = await client.get("/health")
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "healthy"
    assert body["checks"] == {"database": "ok", "channel_layer": "ok"}
    assert UTC_TIMESTAMP.match(body["timestamp"])


async def test_health_is_503_naming_a_broken_channel_layer(client, monkeypatch):
    class BrokenLayer:
        async def new_channel(self, prefix="specific."):
            raise ConnectionError("redis is down")

    monkeypatch.setattr(operations, "get_channel_layer", BrokenLayer)
    response = await client.get("/health")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["channel_layer"] != "ok"


async def test_health_is_503_naming_a_broken_database(client, monkeypatch):
    def broken_database():
        raise ConnectionError("database is down")

    monkeypatch.setattr(operations, "_check_database", broken_database)
    response = await client.get("/health")
    body = response.json()
    assert response.status_code == 503
    assert body["checks"]["database"] != "ok"
    assert body["checks"]["channel_layer"] == "ok"


# --- SSE -------------------------------------------------------------------------------


class SSEStream:
    """An SSE request to the project's ASGI app, read chunk by chunk."""

    def __init__(self, execution_id: str, *, query: str = "", headers: list[tuple[bytes, bytes]] = ()):
        scope = asgi_http_scope(f"/events/human-input/{execution_id}", query=query, headers=headers)
        self.communicator = ApplicationCommunicator(application, scope)
        self.buffer = ""

    async def start(self) -> dict:
        await self.communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await self.communicator.receive_output(timeout=TIMEOUT)
        assert start["type"] == "http.response.start"
        return start

    async def body(self) -> bytes:
        """The whole body of a response that is not a stream."""
        chunks = []
        while True:
            message = await self.communicator.receive_output(timeout=TIMEOUT)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    async def next_block(self) -> str:
        """The next blank-line-terminated SSE block."""
        while "\n\n" not in self.buffer:
            message = await self.communicator.receive_output(timeout=TIMEOUT)
            assert message["type"] == "http.response.body"
            self.buffer += message["body"].decode()
        block, self.buffer = self.buffer.split("\n\n", 1)
        return block

    async def close(self, *, grace: float = TIMEOUT) -> bool:
        """Disconnect; True if the app finished by itself within ``grace`` seconds (else it is cancelled)."""
        await self.communicator.send_input({"type": "http.disconnect"})
        done, _ = await asyncio.wait([self.communicator.future], timeout=grace)
        await self.communicator.wait(timeout=TIMEOUT)
        return bool(done)


@pytest.fixture
async def sse(api_key):
    opened: list[SSEStream] = []

    def open_stream(
        execution_id: str, *, token: str | None = api_key, query: str = "", headers=()
    ) -> SSEStream:
        full_query = "&".join(part for part in (f"token={token}" if token else "", query) if part)
        stream = SSEStream(execution_id, query=full_query, headers=headers)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        await stream.close()


def parse_event(block: str) -> tuple[str, dict]:
    lines = dict(line.split(": ", 1) for line in block.split("\n"))
    return lines["id"], json.loads(lines["data"])


async def test_sse_response_has_the_streaming_headers(sse, execution_id):
    start = await sse(execution_id).start()
    headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    assert start["status"] == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"


async def test_sse_starts_with_retry_then_replays_the_log(sse, execution_id):
    for prompt in ("one", "two"):
        await create_request(execution_id=execution_id, prompt=prompt)
    stream = sse(execution_id)
    await stream.start()
    assert await stream.next_block() == "retry: 3000"
    replay = [parse_event(await stream.next_block()) for _ in range(2)]
    stored = await stored_payloads(execution_id)
    assert replay == [(p["event_id"], p) for p in stored]


async def test_sse_delivers_an_event_written_while_connected(sse, execution_id):
    stream = sse(execution_id)
    await stream.start()
    assert await stream.next_block() == "retry: 3000"
    request = await create_request(execution_id=execution_id, prompt="live")
    event_id, payload = parse_event(await stream.next_block())
    assert payload["request_id"] == str(request.id)
    assert event_id == payload["event_id"]


async def test_sse_resumes_after_the_last_event_id_header(sse, execution_id):
    event_ids = await insert_log(execution_id, 3)
    stream = sse(execution_id, headers=[(b"last-event-id", event_ids[0].encode())])
    await stream.start()
    await stream.next_block()
    assert [parse_event(await stream.next_block())[0] for _ in range(2)] == event_ids[1:]


@override_settings(HUMANINPUT_SSE_HEARTBEAT_SECONDS=0.1)
async def test_sse_sends_a_heartbeat_without_id_when_idle(sse, execution_id):
    stream = sse(execution_id)
    await stream.start()
    await stream.next_block()
    heartbeat = await stream.next_block()
    assert not heartbeat.startswith("id:")
    assert heartbeat.startswith("data: ")
    payload = json.loads(heartbeat.removeprefix("data: "))
    assert payload["type"] == "heartbeat"
    assert UTC_TIMESTAMP.match(payload["timestamp"])


async def test_sse_without_token_is_a_401_json(sse, execution_id):
    stream = sse(execution_id, token=None)
    start = await stream.start()
    assert start["status"] == 401
    assert json.loads(await stream.body())["code"] == "not_authenticated"


async def test_sse_malformed_cursor_is_a_400(sse, execution_id):
    stream = sse(execution_id, headers=[(b"last-event-id", b"nope")])
    start = await stream.start()
    assert start["status"] == 400
    assert json.loads(await stream.body())["code"] == "invalid_cursor"


@pytest.fixture
def group_membership(monkeypatch, own_channel_layer) -> dict[str, list[str]]:
    """Every ``group_add`` and ``group_discard`` made on the channel layer, by group."""
    layer = get_channel_layer()
    calls: dict[str, list[str]] = {"added": [], "discarded": []}
    group_add, group_discard = layer.group_add, layer.group_discard

    async def recording_group_add(group, channel):
        calls["added"].append(group)
        await group_add(group, channel)

    async def recording_group_discard(group, channel):
        calls["discarded"].append(group)
        await group_discard(group, channel)

    monkeypatch.setattr(layer, "group_add", recording_group_add)
    monkeypatch.setattr(layer, "group_discard", recording_group_discard)
    return calls


@pytest.fixture
def join_stalls(monkeypatch, own_channel_layer) -> asyncio.Event:
    """``group_add`` that joins, then never returns: the window a slow Redis round trip opens.

    The returned event is set once the membership exists.
    """
    layer = get_channel_layer()
    joined = asyncio.Event()
    group_add = layer.group_add

    async def stalling_group_add(group, channel):
        await group_add(group, channel)
        joined.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(layer, "group_add", stalling_group_add)
    return joined


async def test_sse_disconnect_while_joining_the_group_leaves_no_membership(
    sse, execution_id, group_membership, join_stalls
):
    stream = sse(execution_id)
    await stream.start()
    assert await stream.next_block() == "retry: 3000"
    await asyncio.wait_for(join_stalls.wait(), timeout=TIMEOUT)
    await stream.close()
    assert group_membership["added"] == [group_name(execution_id)]
    assert group_membership["discarded"] == group_membership["added"]


async def test_cancelled_long_poll_leaves_its_group(
    client, bearer, execution_id, poll_is_waiting, group_membership
):
    poll = asyncio.create_task(client.get(poll_url(execution_id), {"wait": "20"}, headers=bearer))
    await asyncio.wait_for(poll_is_waiting.wait(), timeout=TIMEOUT)
    poll.cancel()
    with pytest.raises(asyncio.CancelledError):
        await poll
    assert group_membership["added"] == [group_name(execution_id)]
    assert group_membership["discarded"] == group_membership["added"]


async def test_sse_streams_end_promptly_when_their_clients_disconnect(sse, execution_id):
    # Each stream has delivered an event before its client leaves. One such
    # disconnect only sometimes shows a stream outliving its client; fifteen
    # in a row show it reliably.
    lingering = []
    for attempt in range(15):
        stream_execution = f"{execution_id}-{attempt}"
        stream = sse(stream_execution)
        await stream.start()
        assert await stream.next_block() == "retry: 3000"
        await create_request(execution_id=stream_execution, prompt="live")
        parse_event(await stream.next_block())
        if not await stream.close(grace=2):
            lingering.append(attempt)
    assert lingering == []
