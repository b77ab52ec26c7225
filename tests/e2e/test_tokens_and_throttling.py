"""Scoped tokens minted by ``POST /api/tokens`` on every transport, and rate limits across processes."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

import harness.redis
from events_app.auth import issue_token

from ..conftest import eventually
from .conftest import (
    DEADLINE,
    REQUESTS,
    DaphneServer,
    bearer,
    create_request,
    poll,
    query,
    running_server,
    sse_connect,
    ws_close_code,
    ws_connect,
    ws_recv,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

THROTTLE_REDIS_URL = "redis://127.0.0.1:6379/0"
THROTTLE_KEYS = "humaninput:*humaninput-throttle*"


async def mint(api: httpx.AsyncClient, execution_id: str, scope: str, **extra: Any) -> str:
    response = await api.post("/api/tokens", json={"execution_id": execution_id, "scope": scope, **extra})
    assert response.status_code == 201, response.text
    return response.json()["token"]


def tampered(token: str) -> str:
    """``token`` with one character of its signed body changed."""
    index = 5
    return token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]


# --- minting --------------------------------------------------------------------


async def test_minting_returns_201_with_token_execution_scope_and_expiry(api, execution_id):
    before = time.time()
    response = await api.post("/api/tokens", json={"execution_id": execution_id, "scope": "respond"})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"token", "token_id", "execution_id", "scope", "expires_at"}
    assert body["execution_id"] == execution_id
    assert body["scope"] == "respond"
    assert isinstance(body["token"], str)
    assert body["token"]
    expires = datetime.fromisoformat(body["expires_at"])
    assert expires.utcoffset().total_seconds() == 0
    assert expires.timestamp() == pytest.approx(before + 3600, abs=5)  # the default lifetime


async def test_minting_honours_a_requested_lifetime(api, execution_id):
    before = time.time()
    response = await api.post(
        "/api/tokens", json={"execution_id": execution_id, "scope": "read", "ttl_seconds": 120}
    )
    assert datetime.fromisoformat(response.json()["expires_at"]).timestamp() == pytest.approx(
        before + 120, abs=5
    )


@pytest.mark.parametrize("headers", [{}, bearer("not-the-key")], ids=["missing", "wrong"])
async def test_minting_without_the_api_key_is_401(server, execution_id, headers):
    async with httpx.AsyncClient(base_url=server.http_url, timeout=DEADLINE) as client:
        response = await client.post(
            "/api/tokens", json={"execution_id": execution_id, "scope": "read"}, headers=headers
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("scope", ["read", "respond"])
async def test_minting_with_a_scoped_token_is_403(server, api, execution_id, scope):
    token = await mint(api, execution_id, scope)
    async with httpx.AsyncClient(base_url=server.http_url, timeout=DEADLINE) as client:
        response = await client.post(
            "/api/tokens", json={"execution_id": execution_id, "scope": "respond"}, headers=bearer(token)
        )
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"scope": "admin"}, "scope"),
        ({"scope": "READ"}, "scope"),
        ({"ttl_seconds": 7 * 86400 + 1}, "ttl_seconds"),
        ({"ttl_seconds": -5}, "ttl_seconds"),
        ({"execution_id": "bad$id"}, "execution_id"),
        ({"execution_id": "e" * 129}, "execution_id"),
        ({"execution_id": ""}, "execution_id"),
    ],
    ids=[
        "scope-unknown",
        "scope-uppercase",
        "ttl-over-max",
        "ttl-negative",
        "exec-bad",
        "exec-long",
        "exec-empty",
    ],
)
async def test_bad_token_request_is_400(api, execution_id, changes, field):
    response = await api.post("/api/tokens", json={"execution_id": execution_id, "scope": "read", **changes})
    assert response.status_code == 400
    assert field in response.json()["errors"]


async def test_the_longest_allowed_lifetime_is_accepted(api, execution_id):
    await mint(api, execution_id, "read", ttl_seconds=7 * 86400)


# --- what a token may do --------------------------------------------------------


async def read_over_ws(server, execution_id, token) -> dict[str, Any]:
    ws = await ws_connect(server, execution_id, token=token)
    event = await ws_recv(ws)
    await ws.close()
    return event


async def read_over_sse(server, execution_id, token) -> dict[str, Any]:
    async with sse_connect(server, execution_id, token=token) as sse:
        assert sse.response.status_code == 200
        return await sse.next_event()


async def read_over_poll(server, execution_id, token) -> dict[str, Any]:
    response = await poll(server, execution_id, headers=bearer(token))
    assert response.status_code == 200
    return response.json()["events"][0]


READERS = {"ws": read_over_ws, "sse": read_over_sse, "poll": read_over_poll}


@pytest.mark.parametrize("scope", ["read", "respond"])
@pytest.mark.parametrize("transport", READERS)
async def test_a_token_reads_its_execution_on_every_transport(server, api, execution_id, transport, scope):
    created = await create_request(api, execution_id)
    token = await mint(api, execution_id, scope)
    event = await READERS[transport](server, execution_id, token)
    assert event["request_id"] == created["id"]


async def test_a_read_token_sees_detail_and_its_filtered_list(server, api, execution_id):
    created = await create_request(api, execution_id)
    token = await mint(api, execution_id, "read")
    async with httpx.AsyncClient(base_url=server.http_url, headers=bearer(token), timeout=DEADLINE) as client:
        detail = await client.get(f"{REQUESTS}/{created['id']}")
        listed = await client.get(REQUESTS, params={"execution_id": execution_id})
    assert detail.status_code == 200
    assert detail.json()["id"] == created["id"]
    assert listed.status_code == 200
    assert [r["id"] for r in listed.json()["results"]] == [created["id"]]


@pytest.mark.parametrize("params", [{}, {"status": "pending"}], ids=["no-filter", "status-only"])
async def test_a_scoped_token_listing_without_its_execution_filter_is_403(server, api, execution_id, params):
    token = await mint(api, execution_id, "read")
    async with httpx.AsyncClient(base_url=server.http_url, headers=bearer(token), timeout=DEADLINE) as client:
        response = await client.get(REQUESTS, params=params)
    assert response.status_code == 403


@pytest.mark.parametrize("action", ["respond", "cancel"])
async def test_a_read_token_cannot_answer_or_cancel_over_rest(server, api, execution_id, action):
    created = await create_request(api, execution_id)
    token = await mint(api, execution_id, "read")
    async with httpx.AsyncClient(base_url=server.http_url, headers=bearer(token), timeout=DEADLINE) as client:
        response = await client.post(f"{REQUESTS}/{created['id']}/{action}", json={"response": "no"})
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert (await api.get(f"{REQUESTS}/{created['id']}")).json()["status"] == "pending"


async def test_a_read_token_answering_over_ws_gets_permission_denied_and_stays_connected(
    server, api, execution_id
):
    created = await create_request(api, execution_id)
    token = await mint(api, execution_id, "read")
    ws = await ws_connect(server, execution_id, token=token)
    await ws_recv(ws)  # human_input_required
    await ws.send(json.dumps({"type": "respond", "request_id": created["id"], "response": "no"}))
    error = await ws_recv(ws)
    assert error["type"] == "error"
    assert error["code"] == "permission_denied"
    await ws.send(json.dumps({"type": "ping"}))
    assert await ws_recv(ws) == {"type": "pong"}
    await ws.close()
    assert (await api.get(f"{REQUESTS}/{created['id']}")).json()["status"] == "pending"


@pytest.mark.parametrize("transport", ["rest", "ws"])
async def test_a_respond_token_can_answer(server, api, execution_id, transport):
    created = await create_request(api, execution_id)
    token = await mint(api, execution_id, "respond")
    if transport == "rest":
        async with httpx.AsyncClient(base_url=server.http_url, headers=bearer(token), timeout=DEADLINE) as c:
            response = await c.post(f"{REQUESTS}/{created['id']}/respond", json={"response": "yes"})
        assert response.status_code == 200
    else:
        ws = await ws_connect(server, execution_id, token=token)
        await ws_recv(ws)  # human_input_required
        await ws.send(json.dumps({"type": "respond", "request_id": created["id"], "response": "yes"}))
        completed = await ws_recv(ws)
        assert completed["type"] == "human_input_completed"
        await ws.close()
    answered = (await api.get(f"{REQUESTS}/{created['id']}")).json()
    assert (answered["status"], answered["response"]) == ("completed", "yes")


async def test_a_respond_token_can_cancel(server, api, execution_id):
    created = await create_request(api, execution_id)
    token = await mint(api, execution_id, "respond")
    async with httpx.AsyncClient(base_url=server.http_url, headers=bearer(token), timeout=DEADLINE) as client:
        response = await client.post(f"{REQUESTS}/{created['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"


# --- tokens refused -------------------------------------------------------------


async def status_on(
    server: DaphneServer, transport: str, execution_id: str, request_id: str, token: str
) -> int:
    """The HTTP status, or the WS close code, with which ``transport`` answers ``token``."""
    if transport == "ws":
        ws = await ws_connect(server, execution_id, token=token)
        return await ws_close_code(ws)
    paths = {
        "sse": ("GET", f"/events/human-input/{execution_id}"),
        "poll": ("GET", f"/poll/human-input/{execution_id}"),
        "detail": ("GET", f"{REQUESTS}/{request_id}"),
        "list": ("GET", f"{REQUESTS}{query(execution_id=execution_id)}"),
        "respond": ("POST", f"{REQUESTS}/{request_id}/respond"),
        "cancel": ("POST", f"{REQUESTS}/{request_id}/cancel"),
    }
    method, path = paths[transport]
    if transport in {"sse", "poll"}:  # the browser way: ?token=
        path, headers = path + query(token=token), {}
    else:
        headers = bearer(token)
    async with httpx.AsyncClient(base_url=server.http_url, timeout=DEADLINE) as client:
        # Stream, so an accepted SSE request is not read to its (never coming) end.
        async with client.stream(
            method, path, headers=headers, json={"response": "x"} if method == "POST" else None
        ) as response:
            return response.status_code


EVERY_TRANSPORT = ["ws", "sse", "poll", "detail", "list", "respond", "cancel"]


def refused(transport: str, http_status: int) -> int:
    return 4000 + http_status if transport == "ws" else http_status


@pytest.mark.parametrize("scope", ["read", "respond"])
@pytest.mark.parametrize("transport", EVERY_TRANSPORT)
async def test_a_token_for_another_execution_is_403_or_4403(
    server, api, execution_id, other_execution_id, transport, scope
):
    created = await create_request(api, execution_id)
    token = await mint(api, other_execution_id, scope)
    assert await status_on(server, transport, execution_id, created["id"], token) == refused(transport, 403)


@pytest.mark.parametrize("transport", EVERY_TRANSPORT)
async def test_a_tampered_token_is_401_or_4401(server, api, execution_id, transport):
    created = await create_request(api, execution_id)
    token = tampered(await mint(api, execution_id, "respond"))
    assert await status_on(server, transport, execution_id, created["id"], token) == refused(transport, 401)


async def test_a_token_expires_after_its_lifetime(server, api, execution_id):
    created = await create_request(api, execution_id)
    # Expiry is whole seconds: a 1-second token may already be dead when first used, 2 s is not.
    token = await mint(api, execution_id, "respond", ttl_seconds=2)
    assert await status_on(server, "detail", execution_id, created["id"], token) == 200
    # Only the server's clock decides when the token dies: ask until it says no.
    await eventually(
        lambda: status_on(server, "detail", execution_id, created["id"], token),
        accept=lambda status: status != 200,
        deadline=5,
        what="the 2-second token being refused",
    )
    for transport in EVERY_TRANSPORT:
        assert await status_on(server, transport, execution_id, created["id"], token) == refused(
            transport, 401
        )
    assert (await api.get(f"{REQUESTS}/{created['id']}")).json()["status"] == "pending"


# --- rate limits ----------------------------------------------------------------


def forget_throttle_history() -> None:
    """Drop every throttle counter in the shared Redis (this run's and earlier runs')."""
    harness.redis.delete_matching(THROTTLE_REDIS_URL, THROTTLE_KEYS)


@pytest.fixture(scope="module")
def throttled_servers(django_db_setup, tmp_path_factory) -> Iterator[tuple[DaphneServer, DaphneServer]]:
    """Two daphne processes counting in one Redis: 5 writes and 3 tokens a minute per caller."""
    limits = {
        "REDIS_URL": THROTTLE_REDIS_URL,
        "HUMANINPUT_THROTTLE_WRITE_RATE": "5/min",
        "HUMANINPUT_THROTTLE_TOKEN_RATE": "3/min",
    }
    tmp = tmp_path_factory.mktemp("throttled")
    with running_server(tmp, **limits) as a, running_server(tmp, **limits) as b:
        yield a, b


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429
    assert re.fullmatch(r"\d+", response.headers["retry-after"])
    assert 0 < int(response.headers["retry-after"]) <= 60
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == "throttled"


@contextlib.asynccontextmanager
async def clients_of(servers: tuple[DaphneServer, ...], token: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One HTTP client per server, all presenting ``token`` (one caller spread over processes)."""
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=server.http_url, headers=bearer(token), timeout=DEADLINE)
            )
            for server in servers
        ]


@pytest.fixture
async def respond_token_clients(throttled_servers, execution_id) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Clients of process A and B acting as one fresh caller: a new respond token, so no other
    test or test run has spent its budget."""
    # Signed here, not minted through a server: minting would spend the API key's token budget.
    token, _ = issue_token(execution_id=execution_id, scope="respond")
    async with clients_of(throttled_servers, token) as clients:
        yield clients


# The requests are asked through the module's unthrottled server: only the answers count here.


async def test_writes_through_two_processes_share_one_budget(api, respond_token_clients, execution_id):
    requests = [await create_request(api, execution_id, prompt=f"q{i}") for i in range(6)]
    statuses = []
    for index, request in enumerate(requests):
        client = respond_token_clients[index % 2]  # A, B, A, B, A, B: three each, six in all
        response = await client.post(f"{REQUESTS}/{request['id']}/respond", json={"response": "ok"})
        statuses.append(response.status_code)
    assert statuses == [200] * 5 + [429]
    assert_throttled(response)
    assert (await api.get(f"{REQUESTS}/{requests[-1]['id']}")).json()["status"] == "pending"


async def test_read_endpoints_are_not_throttled(api, respond_token_clients, execution_id):
    request = await create_request(api, execution_id, prompt="q")
    writes = [await respond_token_clients[i % 2].post(f"{REQUESTS}/{request['id']}/cancel") for i in range(6)]
    assert_throttled(writes[-1])
    for client in respond_token_clients:
        for _ in range(6):
            assert (await client.get(f"{REQUESTS}/{request['id']}")).status_code == 200
            listed = await client.get(REQUESTS, params={"execution_id": execution_id})
            assert listed.status_code == 200
            assert (await client.get(f"/poll/human-input/{execution_id}")).status_code == 200


async def test_the_token_endpoint_has_its_own_budget_shared_by_both_processes(
    throttled_servers, api_key, execution_id
):
    forget_throttle_history()  # the API key is one caller for every test run sharing this Redis
    async with clients_of(throttled_servers, api_key) as (a, b):
        body = {"execution_id": execution_id, "scope": "read"}
        minted = [await client.post("/api/tokens", json=body) for client in (a, b, a, b)]
        assert [r.status_code for r in minted] == [201, 201, 201, 429]
        assert_throttled(minted[-1])
        write = await a.post(REQUESTS, json={"execution_id": execution_id, "prompt": "still allowed"})
        assert write.status_code == 201
