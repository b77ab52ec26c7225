"""Every transport refuses bad credentials and bad input with the spec's answer, never a 500."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
import websockets

from .conftest import DEADLINE, create_request, poll, query, ws_close_code, ws_connect, ws_recv

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BAD_TOKENS = {
    "missing": None,
    "wrong": "not-the-key",
    "non-ascii": "clé-🔑-ключ",
    "prefix-of-key": "test-api",
    "very-long": "k" * 10_000,
}
BAD_EXECUTION_IDS = {
    "too-long-129": "e" * 129,
    "200-chars": "x" * 200,
    "space": "has%20space",
    "dollar": "bad$id",
    "non-ascii": "%C3%A9x",
    "quote": "a%22b",
}
BAD_CURSORS = ["not-a-uuid", "12345", "g" * 32, "00000000-0000-0000-0000-0000000000000", "%00"]


async def http_status(server, path: str, **params: str | None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=DEADLINE) as client:
        # Streams (SSE) answer errors with a plain JSON body; don't wait on a 200 stream.
        async with client.stream("GET", f"{server.http_url}{path}{query(**params)}") as response:
            if response.status_code == 200:
                return response
            await response.aread()
            return response


async def ws_status(server, execution_id: str, **params: str | None) -> int | None:
    ws = await ws_connect(server, execution_id, **params)
    return await ws_close_code(ws)


HTTP_PATHS = {"sse": "/events/human-input/{}", "poll": "/poll/human-input/{}"}


@pytest.mark.parametrize("token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_bad_or_missing_token_is_refused_with_401_or_4401(server, execution_id, transport, token):
    if transport == "ws":
        assert await ws_status(server, execution_id, token=token) == 4401
        return
    response = await http_status(server, HTTP_PATHS[transport].format(execution_id), token=token)
    assert response.status_code == 401
    assert response.json()["code"] in {"not_authenticated", "authentication_failed"}
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_bearer_header_is_accepted_on_http_transports(server, api_key, execution_id, transport):
    async with httpx.AsyncClient(timeout=DEADLINE) as client:
        async with client.stream(
            "GET",
            server.http_url + HTTP_PATHS[transport].format(execution_id),
            headers={"Authorization": f"Bearer {api_key}"},
        ) as response:
            assert response.status_code == 200


async def test_non_ascii_bearer_header_is_a_401_not_a_500(server, execution_id):
    async with httpx.AsyncClient(timeout=DEADLINE) as client:
        response = await client.get(
            server.http_url + HTTP_PATHS["poll"].format(execution_id),
            headers={"Authorization": "Bearer clé".encode()},
        )
    assert response.status_code == 401


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_scoped_token_for_another_execution_is_forbidden(
    server, api, execution_id, other_execution_id, transport
):
    minted = await api.post("/api/tokens", json={"execution_id": other_execution_id, "scope": "read"})
    assert minted.status_code == 201, minted.text
    token = minted.json()["token"]
    if transport == "ws":
        assert await ws_status(server, execution_id, token=token) == 4403
        return
    response = await http_status(server, HTTP_PATHS[transport].format(execution_id), token=token)
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


async def test_health_needs_no_token_and_reports_its_checks(server):
    async with httpx.AsyncClient(timeout=DEADLINE) as client:
        response = await client.get(f"{server.http_url}/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["checks"] == {"database": "ok", "channel_layer": "ok"}
    assert body["timestamp"].endswith("+00:00")


@pytest.mark.parametrize("bad_id", BAD_EXECUTION_IDS.values(), ids=BAD_EXECUTION_IDS.keys())
@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_malformed_execution_id_is_a_400_or_4400(server, api_key, transport, bad_id):
    if transport == "ws":
        assert await ws_status(server, bad_id, token=api_key) == 4400
        return
    response = await http_status(server, HTTP_PATHS[transport].format(bad_id), token=api_key)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_execution_id"


async def test_longest_valid_execution_id_with_every_allowed_character_works(server, api, api_key):
    execution_id = ("Az09._:-" * 16)[:128]
    await create_request(api, execution_id, prompt="edge")
    ws = await ws_connect(server, execution_id, token=api_key)
    assert (await ws_recv(ws))["execution_id"] == execution_id
    await ws.close()
    assert len((await poll(server, execution_id, token=api_key)).json()["events"]) == 1


@pytest.mark.parametrize("cursor", BAD_CURSORS)
@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_malformed_cursor_is_a_400_or_4400(server, api_key, execution_id, transport, cursor):
    if transport == "ws":
        assert await ws_status(server, execution_id, token=api_key, last_event_id=cursor) == 4400
        return
    response = await http_status(
        server, HTTP_PATHS[transport].format(execution_id), token=api_key, last_event_id=cursor
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_cursor"


async def test_malformed_last_event_id_header_is_a_400(server, api_key, execution_id):
    async with httpx.AsyncClient(timeout=DEADLINE) as client:
        response = await client.get(
            f"{server.http_url}/events/human-input/{execution_id}?token={api_key}",
            headers={"Last-Event-ID": "garbage"},
        )
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"wait": "31"}, "wait"),
        ({"wait": "-1"}, "wait"),
        ({"wait": "nan"}, "wait"),
    ],
)
async def test_poll_rejects_out_of_range_limit_and_wait(server, api_key, execution_id, params, field):
    response = await poll(server, execution_id, token=api_key, **params)
    assert response.status_code == 400
    assert response.json()["field"] == field


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('"ping"', "invalid_message"),
        ('{"type": "subscribe"}', "unknown_type"),
        ('{"no_type": 1}', "unknown_type"),
        ('{"type": "respond", "request_id": "nope", "response": "x"}', "invalid_parameter"),
        (
            '{"type": "respond", "request_id": "00000000-0000-4000-8000-000000000000", "response": "x"}',
            "not_found",
        ),
        (
            '{"type": "respond", "request_id": "00000000-0000-4000-8000-000000000000", "response": 5}',
            "invalid_parameter",
        ),
    ],
)
async def test_bad_websocket_messages_get_an_error_frame_and_the_connection_stays_open(
    server, api_key, execution_id, frame, code
):
    ws = await ws_connect(server, execution_id, token=api_key)
    await ws.send(frame)
    error = await ws_recv(ws)
    assert error["type"] == "error"
    assert error["code"] == code
    assert isinstance(error["detail"], str)
    await ws.send(json.dumps({"type": "ping"}))
    assert await ws_recv(ws) == {"type": "pong"}
    await ws.close()


async def test_binary_frame_gets_an_error_frame(server, api_key, execution_id):
    ws = await ws_connect(server, execution_id, token=api_key)
    await ws.send(b"\x00\x01binary")
    assert (await ws_recv(ws))["code"] == "invalid_message"
    await ws.close()


async def test_a_1_mib_frame_closes_with_1009_and_the_server_keeps_serving(server, api_key, execution_id):
    ws = await ws_connect(server, execution_id, token=api_key)
    await ws.send("x" * (1024 * 1024))
    assert await ws_close_code(ws) == 1009
    survivor = await ws_connect(server, execution_id, token=api_key)
    await survivor.send(json.dumps({"type": "ping"}))
    assert await ws_recv(survivor) == {"type": "pong"}
    await survivor.close()


async def test_a_frame_just_under_the_limit_is_parsed(server, api_key, execution_id):
    ws = await ws_connect(server, execution_id, token=api_key)
    await ws.send(json.dumps({"type": "ping", "padding": "p" * 60_000}))
    assert await ws_recv(ws) == {"type": "pong"}
    await ws.close()


async def test_unknown_websocket_path_is_closed_with_4404(server):
    ws = await websockets.connect(f"{server.ws_url}/ws/elsewhere")
    assert await ws_close_code(ws) == 4404


async def test_tokens_never_reach_the_access_log(server, api_key, execution_id):
    secret = "a-token-that-must-not-be-logged"
    await http_status(server, HTTP_PATHS["poll"].format(execution_id), token=secret)
    await ws_status(server, execution_id, token=secret)
    await poll(server, execution_id, token=api_key)
    log = server.log()
    assert execution_id in log
    assert secret not in log
    assert api_key not in log
    assert "token=[redacted]" in log


async def test_client_errors_do_not_flood_the_error_log(server, execution_id):
    """Bad tokens and bad Host headers are the client's doing: the access log has them, one
    line each; the error log (a traceback per bad Host, by Django's default) stays quiet."""
    marker = f"/poll/human-input/{execution_id}"
    async with httpx.AsyncClient(base_url=server.http_url, timeout=DEADLINE) as client:
        for _ in range(20):
            assert (await client.get(marker, headers={"Authorization": "Bearer wrong"})).status_code == 401
        for _ in range(5):
            assert (await client.get(marker, headers={"Host": "evil.example"})).status_code == 400
    log = server.log()
    assert "Unauthorized: " + marker not in log
    assert "Invalid HTTP_HOST header" not in log


@pytest.mark.parametrize("prefix", ["/poll/human-input/", "/events/human-input/"])
async def test_an_execution_id_with_a_newline_is_a_400_json_not_a_404_page(server, api_key, prefix):
    async with httpx.AsyncClient(base_url=server.http_url, timeout=DEADLINE) as client:
        response = await client.get(f"{prefix}a%0Ab", headers={"Authorization": f"Bearer {api_key}"})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_execution_id"


async def test_a_valid_last_event_id_header_does_not_hide_a_malformed_query_cursor(
    server, api_key, execution_id
):
    async with httpx.AsyncClient(base_url=server.http_url, timeout=DEADLINE) as client:
        response = await client.get(
            f"/events/human-input/{execution_id}?last_event_id=not-a-uuid",
            headers={"Authorization": f"Bearer {api_key}", "Last-Event-ID": str(uuid.uuid4())},
        )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_cursor"
