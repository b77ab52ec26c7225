"""Token revocation and the audit trail, against a real daphne.

A revoked token is refused by every transport from the moment it is
revoked, and a connection already open with it is closed at its next
catch-up: this module's server catches up every ``CATCHUP`` seconds, and
each open connection must end within a few of those.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from events_app.client import AuthenticationFailed, HumanInputClient
from tests.conftest import eventually

from .conftest import DEADLINE, bearer, poll, running_server, sse_connect, ws_close_code, ws_connect, ws_recv

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CATCHUP = 1.0
# Revocation is read for the whole process at most every CATCHUP / 5, so a
# connection learns of it within 1.2 catch-ups; the rest is a noisy machine's margin.
CLOSED_WITHIN = 4 * CATCHUP


@pytest.fixture(scope="module")
def revoking_server(django_db_setup, django_db_blocker, tmp_path_factory):
    with running_server(
        tmp_path_factory.mktemp("daphne"),
        HUMANINPUT_CATCHUP_SECONDS=str(CATCHUP),
        HUMANINPUT_SSE_HEARTBEAT_SECONDS="0.5",
    ) as started:
        yield started


@pytest.fixture
async def admin_api(revoking_server, api_key):
    async with httpx.AsyncClient(
        base_url=revoking_server.http_url, headers=bearer(api_key), timeout=DEADLINE
    ) as client:
        yield client


async def mint(admin_api, execution_id: str, scope: str = "respond") -> dict:
    response = await admin_api.post("/api/tokens", json={"execution_id": execution_id, "scope": scope})
    assert response.status_code == 201
    return response.json()


async def revoke(admin_api, token_id: str) -> dict:
    response = await admin_api.post(f"/api/tokens/{token_id}/revoke")
    assert response.status_code == 200, response.text
    return response.json()


async def test_revoke_returns_the_record_and_is_idempotent(admin_api, execution_id):
    minted = await mint(admin_api, execution_id, "read")
    first = await revoke(admin_api, minted["token_id"])
    again = await revoke(admin_api, minted["token_id"])
    assert first["token_id"] == minted["token_id"]
    assert (first["execution_id"], first["scope"], first["issued_by"]) == (execution_id, "read", "api-key")
    assert first["revoked_by"] == "api-key"
    assert first["revoked_at"] is not None
    assert again == first


@pytest.mark.parametrize("token_id", ["0" * 32, "not-a-token", "%C3%BC" * 10, "x" * 300])
async def test_revoking_an_unknown_token_is_404(admin_api, token_id):
    response = await admin_api.post(f"/api/tokens/{token_id}/revoke")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_a_scoped_token_cannot_revoke_tokens(revoking_server, admin_api, execution_id):
    holder = await mint(admin_api, execution_id)
    victim = await mint(admin_api, execution_id)
    async with httpx.AsyncClient(
        base_url=revoking_server.http_url, headers=bearer(holder["token"])
    ) as client:
        response = await client.post(f"/api/tokens/{victim['token_id']}/revoke")
    assert response.status_code == 403


async def test_a_revoked_token_is_refused_by_every_transport(revoking_server, admin_api, execution_id):
    minted = await mint(admin_api, execution_id)
    await revoke(admin_api, minted["token_id"])
    token = minted["token"]
    async with httpx.AsyncClient(base_url=revoking_server.http_url, headers=bearer(token)) as client:
        rest = await client.get("/api/human-input/requests", params={"execution_id": execution_id})
        created = await client.post(
            "/api/human-input/requests", json={"execution_id": execution_id, "prompt": "?"}
        )
    polled = await poll(revoking_server, execution_id, token=token)
    async with sse_connect(revoking_server, execution_id, token=token) as stream:
        sse_status = stream.response.status_code
        sse_body = (await stream.response.aread()).decode()
    ws = await ws_connect(revoking_server, execution_id, token=token)
    assert await ws_close_code(ws) == 4401
    for response in (rest, created, polled):
        assert response.status_code == 401
        assert response.json()["code"] == "token_revoked"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert sse_status == 401
    assert "token_revoked" in sse_body


async def test_revoking_one_token_leaves_another_of_the_same_execution_working(
    revoking_server, admin_api, execution_id
):
    kept = await mint(admin_api, execution_id, "read")
    revoked = await mint(admin_api, execution_id, "read")
    await revoke(admin_api, revoked["token_id"])
    response = await poll(revoking_server, execution_id, token=kept["token"])
    assert response.status_code == 200


async def test_open_websocket_with_a_revoked_token_is_closed_4401(revoking_server, admin_api, execution_id):
    minted = await mint(admin_api, execution_id)
    bystander = await mint(admin_api, execution_id, "read")
    ws = await ws_connect(revoking_server, execution_id, token=minted["token"])
    other = await ws_connect(revoking_server, execution_id, token=bystander["token"])
    await ws.send('{"type": "ping"}')
    assert (await ws_recv(ws))["type"] == "pong"
    revoked_at = time.monotonic()
    await revoke(admin_api, minted["token_id"])
    assert await ws_close_code(ws, deadline=CLOSED_WITHIN) == 4401
    print(f"websocket closed {time.monotonic() - revoked_at:.2f} s after the revocation")
    # The other token's connection stays and still gets events.
    request = (
        await admin_api.post(
            "/api/human-input/requests", json={"execution_id": execution_id, "prompt": "still?"}
        )
    ).json()
    assert (await ws_recv(other))["request_id"] == request["id"]
    await other.close()


async def test_a_revoked_websocket_cannot_answer_before_it_is_closed(
    revoking_server, admin_api, execution_id
):
    """An answer sent between the revocation and the next catch-up is refused, not recorded."""
    minted = await mint(admin_api, execution_id)
    request = (
        await admin_api.post("/api/human-input/requests", json={"execution_id": execution_id, "prompt": "?"})
    ).json()
    ws = await ws_connect(revoking_server, execution_id, token=minted["token"])
    assert (await ws_recv(ws))["request_id"] == request["id"]
    await revoke(admin_api, minted["token_id"])
    await ws.send(f'{{"type": "respond", "request_id": "{request["id"]}", "response": "too late"}}')
    assert await ws_close_code(ws) == 4401
    state = (await admin_api.get(f"/api/human-input/requests/{request['id']}")).json()
    assert state["status"] == "pending"


async def test_open_sse_stream_with_a_revoked_token_ends(revoking_server, admin_api, execution_id):
    minted = await mint(admin_api, execution_id, "read")
    async with sse_connect(revoking_server, execution_id, token=minted["token"]) as stream:
        assert "retry" in await stream.next_message()
        await revoke(admin_api, minted["token_id"])
        last = await asyncio.wait_for(_last_message_before_the_end(stream), CLOSED_WITHIN)
    assert '"token_revoked"' in last["data"]


async def _last_message_before_the_end(stream) -> dict:
    last: dict = {}
    while True:
        try:
            last = await stream.next_message()
        except EOFError:
            return last


async def test_long_poll_with_a_revoked_token_answers_401_before_its_wait_ends(
    revoking_server, admin_api, execution_id
):
    minted = await mint(admin_api, execution_id, "read")
    waiting = asyncio.create_task(poll(revoking_server, execution_id, token=minted["token"], wait="30"))
    await _until_the_poll_waits(admin_api)
    await revoke(admin_api, minted["token_id"])
    response = await asyncio.wait_for(waiting, CLOSED_WITHIN)
    assert response.status_code == 401
    assert response.json()["code"] == "token_revoked"


async def _until_the_poll_waits(admin_api) -> None:
    """Until the server counts a waiting long poll (its subscribers gauge)."""

    async def waiting_polls() -> float:
        metrics = (await admin_api.get("/metrics")).text
        prefix = 'humaninput_subscribers{transport="poll"}'
        return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix))

    await eventually(waiting_polls, accept=lambda count: count >= 1, what="a waiting long poll")


async def test_an_answer_records_the_token_that_gave_it(revoking_server, admin_api, execution_id):
    minted = await mint(admin_api, execution_id)
    request = (
        await admin_api.post("/api/human-input/requests", json={"execution_id": execution_id, "prompt": "?"})
    ).json()
    async with httpx.AsyncClient(
        base_url=revoking_server.http_url, headers=bearer(minted["token"])
    ) as client:
        answered = await client.post(
            f"/api/human-input/requests/{request['id']}/respond", json={"response": "yes"}
        )
    assert answered.status_code == 200
    assert answered.json()["responded_by"] == f"token:{minted['token_id']}"


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_the_python_client_stops_with_an_authentication_error_when_its_token_is_revoked(
    revoking_server, admin_api, execution_id, transport
):
    """Not retried forever, and the error message is never handed out as an event."""
    minted = await mint(admin_api, execution_id, "read")
    client = HumanInputClient(
        revoking_server.http_url, token=minted["token"], transports=(transport,), poll_wait=30
    )
    request = (
        await admin_api.post("/api/human-input/requests", json={"execution_id": execution_id, "prompt": "?"})
    ).json()
    events = client.subscribe(execution_id)
    assert (await asyncio.wait_for(anext(events), DEADLINE))["request_id"] == request["id"]
    await revoke(admin_api, minted["token_id"])
    with pytest.raises(AuthenticationFailed) as raised:
        await asyncio.wait_for(anext(events), CLOSED_WITHIN)
    await events.aclose()
    assert raised.value.status in {401, 4401}
