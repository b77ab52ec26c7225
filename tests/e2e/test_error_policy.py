"""The error policy of ``events_app.streaming.opening``, row by row, on every transport of a real daphne.

Each case is one row of the table (what the client does wrong, or what is
down); each transport must answer it as the table says: an HTTP status with
a JSON body for SSE and polls, a close code for WebSockets, a last
``error`` message for a stream that had already begun.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
import websockets

from .conftest import DEADLINE, REQUESTS, DaphneServer, bearer, unexpected_tracebacks, ws_close_code

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TRANSPORTS = ("ws", "sse", "poll")


@dataclass
class Outcome:
    """What a transport answered: an HTTP status and JSON body, or a WebSocket close code."""

    status: int | None = None
    body: dict[str, Any] | None = None
    close_code: int | None = None
    stream: list[dict[str, Any]] | None = None  # an SSE stream's ``data:`` messages


async def attempt(base: str, transport: str, execution_id: str, pairs: list[tuple[str, str]]) -> Outcome:
    """Open ``transport`` for ``execution_id`` with the raw query ``pairs`` (repeats kept)."""
    query = f"?{urlencode(pairs)}" if pairs else ""
    execution_id = quote(execution_id, safe="")
    if transport == "ws":
        url = base.replace("http://", "ws://") + f"/ws/human-input/{execution_id}{query}"
        async with websockets.connect(url, open_timeout=DEADLINE) as ws:
            return Outcome(close_code=await ws_close_code(ws))
    path = {"sse": "/events/human-input/", "poll": "/poll/human-input/"}[transport]
    async with httpx.AsyncClient(timeout=DEADLINE) as http:
        async with http.stream("GET", f"{base}{path}{execution_id}{query}") as response:
            if response.headers["content-type"].startswith("text/event-stream"):
                return Outcome(status=response.status_code, stream=await stream_until_error(response))
            await response.aread()
            return Outcome(status=response.status_code, body=response.json())


async def stream_until_error(response: httpx.Response) -> list[dict[str, Any]]:
    """The ``data:`` messages of an SSE stream up to its first error message (which ends it)."""
    messages: list[dict[str, Any]] = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            messages.append(json.loads(line[len("data: ") :]))
            if messages[-1]["type"] == "error":
                break
    return messages


def expect(outcome: Outcome, transport: str, *, status: int, close_code: int, code: str) -> None:
    if transport == "ws":
        assert outcome.close_code == close_code, outcome
    else:
        assert outcome.status == status, outcome
        assert outcome.body is not None and outcome.body["code"] == code, outcome


async def mint(http: httpx.AsyncClient, api_key: str, execution_id: str, scope: str = "read") -> dict:
    response = await http.post(
        "/api/tokens", json={"execution_id": execution_id, "scope": scope}, headers=bearer(api_key)
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
async def http(server) -> Any:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=DEADLINE) as client:
        yield client


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_cursor_given_twice_is_a_400_everywhere(server, api_key, execution_id, transport):
    pairs = [("token", api_key), ("last_event_id", "not-a-uuid"), ("last_event_id", str(uuid.uuid4()))]
    outcome = await attempt(server.http_url, transport, execution_id, pairs)
    expect(outcome, transport, status=400, close_code=4400, code="invalid_parameter")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_token_given_twice_is_a_400_everywhere(server, api_key, execution_id, transport):
    outcome = await attempt(
        server.http_url, transport, execution_id, [("token", api_key), ("token", api_key)]
    )
    expect(outcome, transport, status=400, close_code=4400, code="invalid_parameter")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_no_credentials_are_a_401_everywhere(server, execution_id, transport):
    outcome = await attempt(server.http_url, transport, execution_id, [])
    expect(outcome, transport, status=401, close_code=4401, code="not_authenticated")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_non_ascii_token_is_a_401_everywhere(server, execution_id, transport):
    outcome = await attempt(server.http_url, transport, execution_id, [("token", "clé-ключ-鍵")])
    expect(outcome, transport, status=401, close_code=4401, code="not_authenticated")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_token_of_another_execution_is_a_403_everywhere(
    server, http, api_key, execution_id, other_execution_id, transport
):
    token = (await mint(http, api_key, other_execution_id))["token"]
    outcome = await attempt(server.http_url, transport, execution_id, [("token", token)])
    expect(outcome, transport, status=403, close_code=4403, code="permission_denied")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_revoked_token_is_a_401_everywhere(server, http, api_key, execution_id, transport):
    minted = await mint(http, api_key, execution_id)
    revoked = await http.post(f"/api/tokens/{minted['token_id']}/revoke", headers=bearer(api_key))
    assert revoked.status_code == 200, revoked.text
    outcome = await attempt(server.http_url, transport, execution_id, [("token", minted["token"])])
    expect(outcome, transport, status=401, close_code=4401, code="token_revoked")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "bad", ["a b", "x" * 129, "ünïcode", "a/b"], ids=["space", "too-long", "non-ascii", "slash"]
)
async def test_a_malformed_execution_id_is_a_400_everywhere(server, api_key, transport, bad):
    outcome = await attempt(server.http_url, transport, bad, [("token", api_key)])
    expect(outcome, transport, status=400, close_code=4400, code="invalid_execution_id")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_malformed_cursor_is_a_400_everywhere(server, api_key, execution_id, transport):
    outcome = await attempt(
        server.http_url, transport, execution_id, [("token", api_key), ("last_event_id", "1; DROP")]
    )
    expect(outcome, transport, status=400, close_code=4400, code="invalid_cursor")


async def test_the_inbox_stream_refuses_a_repeated_parameter_and_a_scoped_token(
    server, http, api_key, execution_id
):
    repeated = await http.get(
        f"/inbox/stream?execution_id={execution_id}&execution_id=x", headers=bearer(api_key)
    )
    assert (repeated.status_code, repeated.json()["code"]) == (400, "invalid_parameter")
    token = (await mint(http, api_key, execution_id))["token"]
    scoped = await http.get(f"/inbox/stream?token={token}")
    assert (scoped.status_code, scoped.json()["code"]) == (403, "permission_denied")


async def test_the_rest_api_refuses_a_token_given_twice(server, http, api_key):
    response = await http.get(f"{REQUESTS}?token={api_key}&token={api_key}")
    assert (response.status_code, response.json()["code"]) == (400, "invalid_parameter")


# --- the database down ---------------------------------------------------------------------------
#
# A server whose database cannot be opened (a SQLite file in a directory that cannot exist): what
# needs no database (the API key, the schema) works; everything else answers as the table says.


@pytest.fixture(scope="module")
def server_without_database(django_db_setup, django_db_blocker, tmp_path_factory) -> Any:
    started = DaphneServer(
        env_overrides={"DATABASE_URL": "sqlite:////proc/no-such-directory/humaninput.sqlite3"},
        health_path="/api/schema/",  # /health is a 503 here, rightly
    ).start(tmp_path_factory.mktemp("no-database"))
    try:
        yield started
    finally:
        started.stop()
    # The expiry task logs its failed retries with their traceback; nothing else may.
    assert not unexpected_tracebacks(started.log(), ("expiring overdue requests failed",)), started.log()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_database_down_while_opening_is_a_503_or_close_4503(
    server_without_database, api_key, execution_id, transport
):
    # A cursor makes opening read the log (to find it), before any byte of a stream is sent.
    pairs = [("token", api_key), ("last_event_id", str(uuid.uuid4()))]
    outcome = await attempt(server_without_database.http_url, transport, execution_id, pairs)
    expect(outcome, transport, status=503, close_code=4503, code="service_unavailable")


@pytest.mark.parametrize("path", ["/events/human-input/{execution_id}", "/inbox/stream"])
async def test_an_sse_stream_whose_first_read_fails_ends_with_an_error_message(
    server_without_database, api_key, execution_id, path
):
    # No cursor: nothing to look up while opening, so the stream begins, and its first read fails.
    url = server_without_database.http_url + path.format(execution_id=execution_id)
    async with httpx.AsyncClient(timeout=DEADLINE) as http:
        async with http.stream("GET", url, headers=bearer(api_key)) as response:
            assert response.status_code == 200
            messages = await stream_until_error(response)
    assert messages[-1]["code"] == "service_unavailable", messages
