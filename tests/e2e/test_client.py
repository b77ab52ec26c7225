"""The Python client against a real daphne: ask/answer, resume across restarts, fallbacks."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys

import httpx
import pytest
import websockets
from channels.db import database_sync_to_async

from events_app import client as client_module
from events_app import services
from events_app.client import (
    AuthenticationFailed,
    Forbidden,
    HumanInputClient,
    RequestCancelled,
    RequestExpired,
)

from .conftest import (
    CATCH_UP_SECONDS,
    Received,
    api_client,
    create_request,
    run_example,
    running_server,
    ws_connect,
    ws_recv,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def answer_first_request_over_ws(server, api_key, execution_id, response: str) -> dict:
    """A second client: wait on the WebSocket for the question, answer it there."""
    ws = await ws_connect(server, execution_id, token=api_key)
    required = await ws_recv(ws)
    assert required["type"] == "human_input_required"
    await ws.send(json.dumps({"type": "respond", "request_id": required["request_id"], "response": response}))
    completed = await ws_recv(ws)
    await ws.close()
    return {"required": required, "completed": completed}


async def test_ask_async_returns_the_answer_given_by_a_second_client_over_websocket(
    server, api_key, execution_id
):
    client = HumanInputClient(server.http_url, token=api_key)
    answer, exchange = await asyncio.gather(
        client.ask_async(
            execution_id, "Ship it?", context="v1.2", reason_flags={"ambiguity": True}, timeout=30
        ),
        answer_first_request_over_ws(server, api_key, execution_id, "Ship it, carefully."),
    )
    assert answer == "Ship it, carefully."
    assert exchange["required"]["prompt"] == "Ship it?"
    assert exchange["required"]["reason_flags"] == {"ambiguity": True, "missing_field": False}
    assert exchange["completed"]["human_feedback"] == "Ship it, carefully."


async def test_blocking_ask_works_from_synchronous_code(server, api_key, execution_id):
    client = HumanInputClient(server.http_url, token=api_key)
    answer, _ = await asyncio.gather(
        asyncio.to_thread(client.ask, execution_id, "Sync?", timeout=30),
        answer_first_request_over_ws(server, api_key, execution_id, "yes"),
    )
    assert answer == "yes"


async def test_blocking_ask_inside_an_event_loop_is_refused(server, api_key, execution_id):
    with pytest.raises(RuntimeError, match="ask_async"):
        HumanInputClient(server.http_url, token=api_key).ask(execution_id, "x")


async def test_ask_raises_request_cancelled_when_the_request_is_cancelled(server, api_key, execution_id):
    client = HumanInputClient(server.http_url, token=api_key)
    asking = asyncio.create_task(client.ask_async(execution_id, "Cancel me?", timeout=30))
    ws = await ws_connect(server, execution_id, token=api_key)
    required = await ws_recv(ws)
    await client.acancel(required["request_id"])
    with pytest.raises(RequestCancelled):
        await asyncio.wait_for(asking, 15)
    await ws.close()


async def test_ask_raises_request_expired_when_the_server_expires_it(server, api_key, execution_id):
    client = HumanInputClient(server.http_url, token=api_key)
    with pytest.raises(RequestExpired):
        await client.ask_async(execution_id, "Anyone?", timeout=1)


async def test_respond_reports_a_conflict_to_the_second_answerer(server, api_key, execution_id):
    client = HumanInputClient(server.http_url, token=api_key)
    created = await client.acreate_request(execution_id, "Which?")
    assert (await client.arespond(created["id"], "first"))["status"] == "completed"
    with pytest.raises(client_module.Conflict) as conflict:
        await client.arespond(created["id"], "second")
    assert conflict.value.status == 409
    assert conflict.value.request["response"] == "first"
    assert (await asyncio.to_thread(client.get_request, created["id"]))["response"] == "first"


async def collect(subscription, into: Received, stop_after: int) -> None:
    try:
        async for event in subscription:
            await into.add(event)
            if len(into) >= stop_after:
                return
    finally:
        await subscription.aclose()  # hang up, as a real consumer would


async def test_subscriber_resumes_across_a_server_restart_with_nothing_lost_or_repeated(
    tmp_path, api_key, execution_id
):
    async def ask(server, prompts: range) -> None:
        async with api_client(server, api_key) as api:
            for number in prompts:
                await create_request(api, execution_id, prompt=f"q{number}")

    # No server runs to ask through: straight to the database; the client's replay from its
    # cursor after the restart reads these, no doorbell involved.
    write_while_down = database_sync_to_async(
        lambda prompts: [services.request_create(execution_id=execution_id, prompt=f"q{n}") for n in prompts]
    )
    with running_server(tmp_path, HUMANINPUT_CATCHUP_SECONDS=CATCH_UP_SECONDS) as server:
        client = HumanInputClient(server.http_url, token=api_key, reconnect_max_delay=0.5)
        received = Received()
        following = asyncio.create_task(collect(client.subscribe(execution_id), received, stop_after=8))
        await ask(server, range(3))
        await received.count_reaches(3)

        server.stop()  # every connection drops; the client starts reconnecting
        await write_while_down(range(3, 6))
        server.start(tmp_path, port=server.port)
        await ask(server, range(6, 8))
        await asyncio.wait_for(following, 30)

    assert [event["sequence"] for event in received] == list(range(1, 9))
    assert len({event["event_id"] for event in received}) == 8


def closed_port_url() -> str:
    """The URL of a port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize("urls", [[], [""], "", ["http://a", None]], ids=["empty", "blank", "no-url", "none"])
def test_client_needs_at_least_one_url(urls):
    with pytest.raises(ValueError):
        HumanInputClient(urls)


async def test_rest_calls_move_on_from_a_server_that_cannot_be_reached(server, api_key, execution_id):
    client = HumanInputClient([closed_port_url(), server.http_url], token=api_key)
    created = await client.acreate_request(execution_id, "Which server?")
    assert client.server_url == server.http_url
    assert (await client.aget_request(created["id"]))["prompt"] == "Which server?"
    blocking = HumanInputClient([closed_port_url(), server.http_url], token=api_key)
    assert (await asyncio.to_thread(blocking.get_request, created["id"]))["id"] == created["id"]


async def test_rest_call_raises_when_no_server_can_be_reached(execution_id):
    client = HumanInputClient([closed_port_url(), closed_port_url()], token="t")
    with pytest.raises(httpx.ConnectError):
        await client.acreate_request(execution_id, "anyone?")


async def test_subscribe_starts_on_the_first_server_that_answers(server, api, api_key, execution_id):
    await create_request(api, execution_id, prompt="found you")
    client = HumanInputClient([closed_port_url(), server.http_url], token=api_key)
    received = Received()
    await asyncio.wait_for(collect(client.subscribe(execution_id), received, stop_after=1), 15)
    assert received[0]["prompt"] == "found you"
    assert client.server_url == server.http_url


async def test_subscribe_falls_back_to_sse_when_websocket_cannot_connect(
    server, api, api_key, execution_id, monkeypatch
):
    async def refuse(*args, **kwargs):
        raise OSError("WebSocket upgrade blocked")

    opened: list[str] = []
    original_open = HumanInputClient._open

    def spy_open(self, transport, *args):
        opened.append(transport)
        return original_open(self, transport, *args)

    monkeypatch.setattr(client_module.websockets, "connect", refuse)
    monkeypatch.setattr(HumanInputClient, "_open", spy_open)
    await create_request(api, execution_id, prompt="via SSE?")
    client = HumanInputClient(server.http_url, token=api_key)
    received = Received()
    await asyncio.wait_for(collect(client.subscribe(execution_id), received, stop_after=1), 15)
    assert received[0]["prompt"] == "via SSE?"
    assert opened == ["ws", "sse"]


async def test_subscribe_over_long_polling_only(server, api, api_key, execution_id):
    client = HumanInputClient(server.http_url, token=api_key, transports=("poll",), poll_wait=2)
    received = Received()
    following = asyncio.create_task(collect(client.subscribe(execution_id), received, stop_after=2))
    await create_request(api, execution_id, prompt="one")
    await received.count_reaches(1)
    await create_request(api, execution_id, prompt="two")
    await asyncio.wait_for(following, 15)
    assert [event["prompt"] for event in received] == ["one", "two"]


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_subscribe_raises_instead_of_retrying_a_bad_token(server, execution_id, transport):
    client = HumanInputClient(server.http_url, token="wrong", transports=(transport,))
    with pytest.raises(AuthenticationFailed):
        await asyncio.wait_for(anext(client.subscribe(execution_id)), 15)


async def test_subscribe_raises_forbidden_for_a_token_of_another_execution(
    server, api_key, execution_id, other_execution_id
):
    token = (
        await HumanInputClient(server.http_url, token=api_key)._arequest(
            "POST", "/api/tokens", {"execution_id": other_execution_id, "scope": "read"}
        )
    )["token"]
    client = HumanInputClient(server.http_url, token=token)
    with pytest.raises(Forbidden):
        await asyncio.wait_for(anext(client.subscribe(execution_id)), 15)


def test_the_client_module_does_not_import_django():
    code = "import sys, events_app.client; print('django' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


async def test_websockets_library_is_what_the_client_uses():
    assert client_module.websockets is websockets


async def test_the_example_script_asks_and_gets_its_own_answer(server, api_key, execution_id):
    output = await run_example(
        server, api_key, "ask_human.py", "--auto-answer", "--execution-id", execution_id, "--timeout", "30"
    )
    assert "[agent] the human said: 'Yes, go ahead'" in output
