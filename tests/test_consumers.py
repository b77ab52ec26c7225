"""The WebSocket transport, in process: ``WebsocketCommunicator`` against the project's ASGI app."""

from __future__ import annotations

import json
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client, override_settings

from events_app import auth, services
from events_app.auth import READ, RESPOND, issue_token
from events_app.models import HumanInputEvent
from humaninput_project.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("own_channel_layer")]

TIMEOUT = 5

create_request = database_sync_to_async(services.request_create)
respond = database_sync_to_async(services.request_respond)


@pytest.fixture
async def ws(layer_ready):
    """Open WebSocket connections to the app; each is disconnected after the test."""
    opened: list[WebsocketCommunicator] = []

    async def open_connection(
        execution_id: str, *, token: str | None = None, query: str = "", headers=None
    ) -> WebsocketCommunicator:
        params = "&".join(p for p in (f"token={token}" if token else "", query) if p)
        path = f"/ws/human-input/{execution_id}" + (f"?{params}" if params else "")
        communicator = WebsocketCommunicator(application, path, headers=headers or [])
        opened.append(communicator)
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected
        return communicator

    yield open_connection
    for communicator in opened:
        await communicator.disconnect(timeout=TIMEOUT)


async def next_frame(communicator: WebsocketCommunicator) -> dict:
    return await communicator.receive_json_from(timeout=TIMEOUT)


async def close_code(communicator: WebsocketCommunicator) -> int:
    message = await communicator.receive_output(timeout=TIMEOUT)
    assert message["type"] == "websocket.close", message
    return message["code"]


async def stored_payloads(execution_id: str) -> list[dict]:
    query = HumanInputEvent.objects.filter(execution_id=execution_id).order_by("sequence")
    return [event.payload async for event in query]


async def send(communicator: WebsocketCommunicator, message: dict) -> None:
    await communicator.send_json_to(message)


# --- connecting -------------------------------------------------------------


async def test_api_key_connection_replays_the_log_in_sequence_order(ws, api_key, execution_id):
    first = await create_request(execution_id=execution_id, prompt="one")
    await create_request(execution_id=execution_id, prompt="two")
    await respond(request_id=first.id, response="done")
    communicator = await ws(execution_id, token=api_key)
    replay = [await next_frame(communicator) for _ in range(3)]
    assert replay == await stored_payloads(execution_id)
    assert [p["sequence"] for p in replay] == [1, 2, 3]


async def test_replay_sends_each_event_once(ws, api_key, execution_id):
    await create_request(execution_id=execution_id, prompt="one")
    communicator = await ws(execution_id, token=api_key)
    assert (await next_frame(communicator))["sequence"] == 1
    await send(communicator, {"type": "ping"})
    assert await next_frame(communicator) == {"type": "pong"}


async def test_known_cursor_replays_only_later_events(ws, api_key, execution_id):
    for prompt in ("one", "two", "three"):
        await create_request(execution_id=execution_id, prompt=prompt)
    cursor = (await stored_payloads(execution_id))[0]["event_id"]
    communicator = await ws(execution_id, token=api_key, query=f"last_event_id={cursor}")
    assert [(await next_frame(communicator))["sequence"] for _ in range(2)] == [2, 3]
    await send(communicator, {"type": "ping"})
    assert await next_frame(communicator) == {"type": "pong"}


async def test_unknown_cursor_replays_the_whole_log(ws, api_key, execution_id):
    await create_request(execution_id=execution_id, prompt="one")
    await create_request(execution_id=execution_id, prompt="two")
    communicator = await ws(execution_id, token=api_key, query=f"last_event_id={uuid.uuid4()}")
    assert [(await next_frame(communicator))["sequence"] for _ in range(2)] == [1, 2]


async def test_event_written_while_connected_is_delivered_live(ws, api_key, execution_id):
    communicator = await ws(execution_id, token=api_key)
    request = await create_request(execution_id=execution_id, prompt="live")
    event = await next_frame(communicator)
    assert (event["type"], event["request_id"], event["sequence"]) == (
        "human_input_required",
        str(request.id),
        1,
    )


async def test_connection_sees_only_its_execution(ws, api_key, execution_id, other_execution_id):
    communicator = await ws(execution_id, token=api_key)
    await create_request(execution_id=other_execution_id, prompt="elsewhere")
    await create_request(execution_id=execution_id, prompt="here")
    assert (await next_frame(communicator))["prompt"] == "here"


async def test_read_token_of_the_execution_connects(ws, execution_id):
    await create_request(execution_id=execution_id, prompt="one")
    token, _ = issue_token(execution_id=execution_id, scope=READ)
    communicator = await ws(execution_id, token=token)
    assert (await next_frame(communicator))["sequence"] == 1


def make_session(*, is_staff: bool) -> str:
    user = User.objects.create_user(username=f"user-{uuid.uuid4().hex[:8]}", is_staff=is_staff)
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def test_staff_session_connects_without_token(ws, execution_id):
    await create_request(execution_id=execution_id, prompt="one")
    session = await database_sync_to_async(make_session)(is_staff=True)
    communicator = await ws(execution_id, headers=[(b"cookie", f"sessionid={session}".encode())])
    assert (await next_frame(communicator))["sequence"] == 1


async def test_non_staff_session_is_closed_4401(ws, execution_id):
    session = await database_sync_to_async(make_session)(is_staff=False)
    communicator = await ws(execution_id, headers=[(b"cookie", f"sessionid={session}".encode())])
    assert await close_code(communicator) == 4401


async def test_missing_token_is_closed_4401(ws, execution_id):
    communicator = await ws(execution_id)
    assert await close_code(communicator) == 4401


@pytest.mark.parametrize(
    "token", ["wrong", "x" * 5000, "%C3%A9t%C3%A9", "%FF%FE"], ids=["wrong", "long", "non-ascii", "non-utf8"]
)
async def test_wrong_token_is_closed_4401(ws, execution_id, token):
    communicator = await ws(execution_id, token=token)
    assert await close_code(communicator) == 4401


async def test_expired_token_is_closed_4401(ws, execution_id, monkeypatch):
    token, expires = issue_token(execution_id=execution_id, scope=READ, ttl_seconds=60)

    class AfterExpiry:
        @staticmethod
        def time() -> float:
            return expires + 1

    monkeypatch.setattr(auth, "time", AfterExpiry)
    communicator = await ws(execution_id, token=token)
    assert await close_code(communicator) == 4401


async def test_token_of_another_execution_is_closed_4403(ws, execution_id, other_execution_id):
    token, _ = issue_token(execution_id=other_execution_id, scope=RESPOND)
    communicator = await ws(execution_id, token=token)
    assert await close_code(communicator) == 4403


@pytest.mark.parametrize(
    "bad_id",
    ["", "a$b", "x" * 129, "has%20space", "caf%C3%A9", "a/b"],
    ids=["empty", "dollar", "too-long", "space", "non-ascii", "slash"],
)
async def test_invalid_execution_id_is_closed_4400(ws, api_key, bad_id):
    communicator = await ws(bad_id, token=api_key)
    assert await close_code(communicator) == 4400


@pytest.mark.parametrize("cursor", ["nope", "1234", "x" * 100], ids=["word", "digits", "too-long"])
async def test_malformed_cursor_is_closed_4400(ws, api_key, execution_id, cursor):
    communicator = await ws(execution_id, token=api_key, query=f"last_event_id={cursor}")
    assert await close_code(communicator) == 4400


async def test_unknown_websocket_path_is_closed_4404(layer_ready):
    communicator = WebsocketCommunicator(application, "/ws/somewhere-else")
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    assert await close_code(communicator) == 4404
    await communicator.disconnect(timeout=TIMEOUT)


# --- client messages --------------------------------------------------------------


async def test_ping_gets_pong(ws, api_key, execution_id):
    communicator = await ws(execution_id, token=api_key)
    await send(communicator, {"type": "ping"})
    assert await next_frame(communicator) == {"type": "pong"}


async def test_invalid_json_gets_an_error_and_the_connection_stays_open(ws, api_key, execution_id):
    communicator = await ws(execution_id, token=api_key)
    await communicator.send_to(text_data="{not json")
    error = await next_frame(communicator)
    assert (error["type"], error["code"]) == ("error", "invalid_json")
    assert error["detail"]
    await send(communicator, {"type": "ping"})
    assert await next_frame(communicator) == {"type": "pong"}


@pytest.mark.parametrize("text", ["[1, 2]", '"ping"', "42", "null", "true"])
async def test_non_object_json_is_an_invalid_message(ws, api_key, execution_id, text):
    communicator = await ws(execution_id, token=api_key)
    await communicator.send_to(text_data=text)
    assert (await next_frame(communicator))["code"] == "invalid_message"


@pytest.mark.parametrize(
    "message", [{"type": "dance"}, {}, {"type": 7}], ids=["unknown", "missing", "number"]
)
async def test_unknown_message_type_is_an_error(ws, api_key, execution_id, message):
    communicator = await ws(execution_id, token=api_key)
    await send(communicator, message)
    error = await next_frame(communicator)
    assert (error["type"], error["code"]) == ("error", "unknown_type")


async def test_binary_frame_gets_an_error_and_the_connection_stays_open(ws, api_key, execution_id):
    communicator = await ws(execution_id, token=api_key)
    await communicator.send_to(bytes_data=json.dumps({"type": "ping"}).encode())
    error = await next_frame(communicator)
    assert (error["type"], error["code"]) == ("error", "invalid_message")
    await send(communicator, {"type": "ping"})
    assert await next_frame(communicator) == {"type": "pong"}


@override_settings(HUMANINPUT_WS_MAX_MESSAGE_BYTES=100)
async def test_oversized_message_gets_an_error_and_the_connection_stays_open(ws, api_key, execution_id):
    communicator = await ws(execution_id, token=api_key)
    await send(communicator, {"type": "ping", "padding": "x" * 200})
    error = await next_frame(communicator)
    assert (error["type"], error["code"]) == ("error", "invalid_message")
    await send(communicator, {"type": "ping"})
    assert await next_frame(communicator) == {"type": "pong"}


# --- answering --------------------------------------------------------------------


async def test_answer_reaches_every_subscriber_as_completed(ws, api_key, execution_id):
    request = await create_request(execution_id=execution_id, prompt="Approve?")
    answering = await ws(execution_id, token=api_key)
    watching = await ws(execution_id, token=api_key)
    for communicator in (answering, watching):
        assert (await next_frame(communicator))["sequence"] == 1
    await send(answering, {"type": "respond", "request_id": str(request.id), "response": "yes"})
    for communicator in (answering, watching):
        event = await next_frame(communicator)
        assert (event["type"], event["human_feedback"], event["request_id"], event["sequence"]) == (
            "human_input_completed",
            "yes",
            str(request.id),
            2,
        )


async def test_answer_is_recorded_with_the_answering_principal(ws, execution_id):
    request = await create_request(execution_id=execution_id, prompt="Approve?")
    token, _ = issue_token(execution_id=execution_id, scope=RESPOND)
    communicator = await ws(execution_id, token=token)
    await next_frame(communicator)
    await send(communicator, {"type": "respond", "request_id": str(request.id), "response": "yes"})
    assert (await next_frame(communicator))["type"] == "human_input_completed"
    await request.arefresh_from_db()
    assert (request.status, request.response) == ("completed", "yes")
    assert request.responded_by.startswith("token:")


async def test_second_answer_gets_already_answered(ws, api_key, execution_id):
    request = await create_request(execution_id=execution_id, prompt="Approve?")
    communicator = await ws(execution_id, token=api_key)
    await next_frame(communicator)
    answer = {"type": "respond", "request_id": str(request.id), "response": "yes"}
    await send(communicator, answer)
    assert (await next_frame(communicator))["type"] == "human_input_completed"
    await send(communicator, {**answer, "response": "no"})
    error = await next_frame(communicator)
    assert (error["type"], error["code"]) == ("error", "already_answered")
    await request.arefresh_from_db()
    assert request.response == "yes"


async def test_answer_with_a_read_token_is_permission_denied(ws, execution_id):
    request = await create_request(execution_id=execution_id, prompt="Approve?")
    token, _ = issue_token(execution_id=execution_id, scope=READ)
    communicator = await ws(execution_id, token=token)
    await next_frame(communicator)
    await send(communicator, {"type": "respond", "request_id": str(request.id), "response": "yes"})
    assert (await next_frame(communicator))["code"] == "permission_denied"
    await request.arefresh_from_db()
    assert request.status == "pending"


async def test_answer_to_a_request_of_another_execution_is_not_found(
    ws, api_key, execution_id, other_execution_id
):
    foreign = await create_request(execution_id=other_execution_id, prompt="not yours")
    communicator = await ws(execution_id, token=api_key)
    await send(communicator, {"type": "respond", "request_id": str(foreign.id), "response": "yes"})
    assert (await next_frame(communicator))["code"] == "not_found"
    await foreign.arefresh_from_db()
    assert foreign.status == "pending"


async def test_answer_to_an_unknown_request_is_not_found(ws, api_key, execution_id):
    communicator = await ws(execution_id, token=api_key)
    await send(communicator, {"type": "respond", "request_id": str(uuid.uuid4()), "response": "yes"})
    assert (await next_frame(communicator))["code"] == "not_found"


@pytest.mark.parametrize(
    "message",
    [
        {"type": "respond", "request_id": "not-a-uuid", "response": "yes"},
        {"type": "respond", "response": "yes"},
        {"type": "respond", "request_id": str(uuid.UUID(int=1)), "response": 42},
        {"type": "respond", "request_id": str(uuid.UUID(int=1))},
    ],
    ids=["malformed-id", "missing-id", "non-string-response", "missing-response"],
)
async def test_malformed_answer_is_an_invalid_parameter(ws, api_key, execution_id, message):
    communicator = await ws(execution_id, token=api_key)
    await send(communicator, message)
    error = await next_frame(communicator)
    assert (error["type"], error["code"]) == ("error", "invalid_parameter")
    await send(communicator, {"type": "ping"})
    assert await next_frame(communicator) == {"type": "pong"}
