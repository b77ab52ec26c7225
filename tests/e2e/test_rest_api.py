"""The REST API of a real daphne: create, list, detail, respond, cancel, and bad input.

Every write goes through the server, so the events it produces reach the
server's own subscribers on either channel layer.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from .conftest import (
    CATCH_UP_SECONDS,
    REQUESTS,
    REQUIRED_FIELDS,
    DaphneServer,
    assert_timestamp,
    bearer,
    create_request,
    poll,
    respond,
    running_server,
    ws_connect,
    ws_recv,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LIMIT = 65536  # HUMANINPUT_MAX_TEXT_BYTES, the documented default


@pytest.fixture(scope="module")
def second_server(django_db_setup, tmp_path_factory) -> Iterator[DaphneServer]:
    """Another daphne on the same database, so concurrent answers really race."""
    with running_server(
        tmp_path_factory.mktemp("daphne-second"), HUMANINPUT_CATCHUP_SECONDS=CATCH_UP_SECONDS
    ) as started:
        yield started


async def cancel(api: httpx.AsyncClient, request_id: str) -> httpx.Response:
    return await api.post(f"{REQUESTS}/{request_id}/cancel")


async def log_of(server: DaphneServer, api_key: str, execution_id: str) -> list[dict[str, Any]]:
    response = await poll(server, execution_id, token=api_key, limit="1000")
    assert response.status_code == 200
    return response.json()["events"]


async def ws_next_of_type(ws: Any, kind: str) -> dict[str, Any]:
    """The next frame of type ``kind``; frames of other types before it are skipped."""
    while True:
        frame = await ws_recv(ws)
        if frame["type"] == kind:
            return frame


# --- create ---------------------------------------------------------------------


async def test_create_returns_201_with_the_request_and_its_event_cursor(api, execution_id):
    response = await api.post(
        REQUESTS,
        json={
            "execution_id": execution_id,
            "prompt": "Ship it?",
            "context": "release 1.2",
            "crew_id": "crew-1",
            "task_id": "task-1",
            "agent_id": "agent-1",
            "reason_flags": {"ambiguity": True},
            "timeout_seconds": 600,
            "metadata": {"ticket": 42},
        },
    )
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body == {
        **body,
        "execution_id": execution_id,
        "prompt": "Ship it?",
        "context": "release 1.2",
        "crew_id": "crew-1",
        "task_id": "task-1",
        "agent_id": "agent-1",
        "reason_flags": {"ambiguity": True, "missing_field": False},
        "status": "pending",
        "response": "",
        "responded_at": None,
        "metadata": {"ticket": 42},
        "sequence": 1,
    }
    uuid.UUID(body["id"])
    uuid.UUID(body["event_id"])
    lifetime = datetime.fromisoformat(body["expires_at"]) - datetime.fromisoformat(body["created_at"])
    assert lifetime.total_seconds() == pytest.approx(600, abs=1)


async def test_create_without_timeout_never_expires(api, execution_id):
    assert (await create_request(api, execution_id))["expires_at"] is None


async def test_created_request_is_announced_as_human_input_required_on_ws_and_poll(
    server, api, api_key, execution_id
):
    ws = await ws_connect(server, execution_id, token=api_key)
    created = await create_request(api, execution_id, context="why", reason_flags={"missing_field": True})
    live = await ws_recv(ws)
    await ws.close()
    (logged,) = await log_of(server, api_key, execution_id)
    assert live == logged
    assert set(live) == REQUIRED_FIELDS
    assert live == {
        **live,
        "type": "human_input_required",
        "execution_id": execution_id,
        "prompt": "Ship it?",
        "context": "why",
        "reason_flags": {"ambiguity": False, "missing_field": True},
        "request_id": created["id"],
        "event_id": created["event_id"],
        "sequence": created["sequence"],
    }
    assert_timestamp(live["timestamp"])


@pytest.mark.parametrize("prompt", ["x" * LIMIT, "é" * (LIMIT // 2)], ids=["ascii", "two-byte"])
async def test_prompt_of_exactly_the_limit_in_utf8_bytes_is_accepted(api, execution_id, prompt):
    assert (await create_request(api, execution_id, prompt=prompt))["prompt"] == prompt


# --- list and detail ------------------------------------------------------------


async def test_list_filters_by_execution_id_and_status(api, execution_id, other_execution_id):
    pending = await create_request(api, execution_id)
    answered = await create_request(api, execution_id)
    await create_request(api, other_execution_id)
    assert (await respond(api, answered["id"], "ok")).status_code == 200

    mine = (await api.get(REQUESTS, params={"execution_id": execution_id})).json()["results"]
    assert {r["id"] for r in mine} == {pending["id"], answered["id"]}
    completed = (
        await api.get(REQUESTS, params={"execution_id": execution_id, "status": "completed"})
    ).json()["results"]
    assert [r["id"] for r in completed] == [answered["id"]]
    assert completed[0]["response"] == "ok"
    still_pending = (
        await api.get(REQUESTS, params={"execution_id": execution_id, "status": "pending"})
    ).json()["results"]
    assert [r["id"] for r in still_pending] == [pending["id"]]


async def test_list_pages_newest_first_with_a_cursor(api, execution_id):
    created = [(await create_request(api, execution_id, prompt=f"q{i}"))["id"] for i in range(5)]
    seen: list[str] = []
    sizes = []
    url: str | None = f"{REQUESTS}?execution_id={execution_id}&page_size=2"
    while url is not None:
        response = await api.get(url)
        assert response.status_code == 200
        page = response.json()
        sizes.append(len(page["results"]))
        seen += [r["id"] for r in page["results"]]
        url = page["next"]
    assert sizes == [2, 2, 1]
    assert seen == created[::-1]


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("status", "finished"),
        ("execution_id", "bad$id"),
        ("execution_id", "e" * 129),
        ("cursor", "garbage"),
        ("cursor", "cD0yMDI2"),  # base64 of a cursor with a position that is not a timestamp
    ],
)
async def test_list_refuses_invalid_filters_and_cursors_with_400(api, param, value):
    response = await api.get(REQUESTS, params={param: value})
    assert response.status_code == 400
    assert param in response.json()["errors"]


async def test_detail_returns_the_request(api, execution_id):
    created = await create_request(api, execution_id, context="ctx")
    response = await api.get(f"{REQUESTS}/{created['id']}")
    assert response.status_code == 200
    detail = response.json()
    assert detail == {k: v for k, v in created.items() if k not in {"event_id", "sequence"}}


# --- respond and cancel ---------------------------------------------------------


async def test_first_answer_wins_and_a_second_gets_409_with_the_current_state(api, execution_id):
    created = await create_request(api, execution_id)
    first = await respond(api, created["id"], "Yes")
    assert first.status_code == 200
    assert first.json() == {**first.json(), "status": "completed", "response": "Yes", "id": created["id"]}
    assert datetime.fromisoformat(first.json()["responded_at"]).utcoffset().total_seconds() == 0

    second = await respond(api, created["id"], "No")
    assert second.status_code == 409
    body = second.json()
    assert body["code"] == "already_answered"
    assert body["status"] == "completed"
    assert body["request_id"] == created["id"]
    assert body["request"] == first.json()


async def test_cancel_returns_200_and_a_later_answer_gets_409(api, execution_id):
    created = await create_request(api, execution_id)
    cancelled = await cancel(api, created["id"])
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"

    late = await respond(api, created["id"], "too late")
    assert late.status_code == 409
    assert late.json()["status"] == "cancelled"
    assert late.json()["request"] == cancelled.json()


async def test_cancel_after_an_answer_is_409_and_the_answer_stands(api, execution_id):
    created = await create_request(api, execution_id)
    assert (await respond(api, created["id"], "Yes")).status_code == 200
    late = await cancel(api, created["id"])
    assert late.status_code == 409
    assert late.json()["status"] == "completed"
    assert late.json()["request"]["response"] == "Yes"


async def test_answer_and_cancel_are_logged_as_completed_and_cancelled_events(
    server, api, api_key, execution_id
):
    answered = await create_request(api, execution_id)
    withdrawn = await create_request(api, execution_id)
    await respond(api, answered["id"], "Yes")
    await cancel(api, withdrawn["id"])
    await respond(api, answered["id"], "refused, not logged")
    events = await log_of(server, api_key, execution_id)
    assert [(e["type"], e["request_id"]) for e in events] == [
        ("human_input_required", answered["id"]),
        ("human_input_required", withdrawn["id"]),
        ("human_input_completed", answered["id"]),
        ("human_input_cancelled", withdrawn["id"]),
    ]
    assert events[2]["human_feedback"] == "Yes"


OPERATIONS = {
    "detail": ("GET", ""),
    "respond": ("POST", "/respond"),
    "cancel": ("POST", "/cancel"),
}


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_unknown_request_id_is_404(api, operation):
    method, suffix = OPERATIONS[operation]
    response = await api.request(method, f"{REQUESTS}/{uuid.uuid4()}{suffix}", json={"response": "x"})
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize("request_id", ["not-a-uuid", "1234", "g" * 32, "%20"])
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_malformed_request_id_is_400(api, operation, request_id):
    method, suffix = OPERATIONS[operation]
    response = await api.request(method, f"{REQUESTS}/{request_id}{suffix}", json={"response": "x"})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_parameter"


# --- concurrency ----------------------------------------------------------------


async def test_twenty_four_concurrent_answers_over_two_processes_give_one_200_and_one_event(
    server, second_server, api_key, execution_id
):
    async with (
        httpx.AsyncClient(base_url=server.http_url, headers=bearer(api_key), timeout=60) as a,
        httpx.AsyncClient(base_url=second_server.http_url, headers=bearer(api_key), timeout=60) as b,
    ):
        created = await create_request(a, execution_id)
        answers = [f"answer {i}" for i in range(24)]
        responses = await asyncio.gather(
            *(respond(a if i % 2 else b, created["id"], answer) for i, answer in enumerate(answers))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * 23
    (winner,) = [answers[i] for i, r in enumerate(responses) if r.status_code == 200]
    assert {r.json()["request"]["response"] for r in responses if r.status_code == 409} == {winner}

    completed = [
        e for e in await log_of(server, api_key, execution_id) if e["type"] != "human_input_required"
    ]
    assert [(e["type"], e["human_feedback"]) for e in completed] == [("human_input_completed", winner)]


@pytest.mark.parametrize("first", ["rest", "ws"])
async def test_websocket_and_rest_answers_obey_first_answer_wins(server, api, api_key, execution_id, first):
    created = await create_request(api, execution_id)
    ws = await ws_connect(server, execution_id, token=api_key)
    await ws_next_of_type(ws, "human_input_required")

    async def answer_over_ws(text: str) -> None:
        await ws.send(json.dumps({"type": "respond", "request_id": created["id"], "response": text}))

    if first == "rest":
        assert (await respond(api, created["id"], "from rest")).status_code == 200
        await answer_over_ws("from ws")
        error = await ws_next_of_type(ws, "error")
        assert error["code"] == "already_answered"
        winner = "from rest"
    else:
        await answer_over_ws("from ws")
        assert (await ws_next_of_type(ws, "human_input_completed"))["human_feedback"] == "from ws"
        late = await respond(api, created["id"], "from rest")
        assert late.status_code == 409
        assert late.json()["request"]["response"] == "from ws"
        winner = "from ws"
    await ws.close()
    completed = [
        e for e in await log_of(server, api_key, execution_id) if e["type"] != "human_input_required"
    ]
    assert [e["human_feedback"] for e in completed] == [winner]


async def test_racing_websocket_and_rest_answers_log_exactly_one_completion(
    server, api, api_key, execution_id
):
    created = await create_request(api, execution_id)
    ws = await ws_connect(server, execution_id, token=api_key)
    await ws_next_of_type(ws, "human_input_required")
    _, rest = await asyncio.gather(
        ws.send(json.dumps({"type": "respond", "request_id": created["id"], "response": "from ws"})),
        respond(api, created["id"], "from rest"),
    )
    # The consumer handles client messages in order: an error frame for the
    # answer, if any, comes before the pong; the completed event may come later.
    await ws.send(json.dumps({"type": "ping"}))
    frames = [await ws_recv(ws)]
    while frames[-1]["type"] != "pong":
        frames.append(await ws_recv(ws))
    completed = [f for f in frames if f["type"] == "human_input_completed"]
    if not completed:
        completed.append(await ws_next_of_type(ws, "human_input_completed"))
    await ws.close()
    errors = [f["code"] for f in frames if f["type"] == "error"]
    if rest.status_code == 200:
        assert (errors, completed[0]["human_feedback"]) == (["already_answered"], "from rest")
    else:
        assert rest.status_code == 409
        assert (errors, completed[0]["human_feedback"]) == ([], "from ws")
    events = await log_of(server, api_key, execution_id)
    assert [e["type"] for e in events] == ["human_input_required", "human_input_completed"]


WS_BAD_ANSWERS = {
    "response-number": ({"response": 5}, "invalid_parameter"),
    "response-missing": ({}, "invalid_parameter"),
    "response-nul": ({"response": "a\x00b"}, "invalid_parameter"),
    "response-lone-surrogate": ({"response": "\udfff"}, "invalid_parameter"),
    "request-id-malformed": ({"request_id": "not-a-uuid", "response": "x"}, "invalid_parameter"),
    "request-id-unknown": ({"request_id": str(uuid.UUID(int=1)), "response": "x"}, "not_found"),
}


@pytest.mark.parametrize(("fields", "code"), WS_BAD_ANSWERS.values(), ids=WS_BAD_ANSWERS.keys())
async def test_a_bad_websocket_answer_gets_an_error_frame_and_changes_nothing(
    server, api, api_key, execution_id, fields, code
):
    created = await create_request(api, execution_id)
    ws = await ws_connect(server, execution_id, token=api_key)
    await ws_next_of_type(ws, "human_input_required")
    await ws.send(json.dumps({"type": "respond", "request_id": created["id"], **fields}))
    error = await ws_recv(ws)
    assert (error["type"], error["code"]) == ("error", code)
    await ws.send(json.dumps({"type": "ping"}))
    assert await ws_recv(ws) == {"type": "pong"}
    await ws.close()
    assert (await api.get(f"{REQUESTS}/{created['id']}")).json()["status"] == "pending"


# --- bad input ------------------------------------------------------------------


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()


def nested(depth: int) -> bytes:
    return b'{"metadata": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"


EXEC = "exec-bad-input"
NON_OBJECTS = {"array": [], "string": "x", "number": 1, "null": None}
PARSE_ERRORS = {
    "invalid-json": b'{"prompt": ',
    "nan": b'{"execution_id": "e", "prompt": "p", "timeout_seconds": NaN}',
    "deeply-nested": nested(100_000),
}


def valid_create(**changes: Any) -> dict[str, Any]:
    body = {"execution_id": EXEC, "prompt": "Ship it?", **changes}
    return {key: value for key, value in body.items() if value is not ...}


CREATE_FIELD_ERRORS = {
    "prompt-number": (valid_create(prompt=5), "prompt"),
    "prompt-null": (valid_create(prompt=None), "prompt"),
    "prompt-missing": (valid_create(prompt=...), "prompt"),
    "prompt-over-limit": (valid_create(prompt="x" * (LIMIT + 1)), "prompt"),
    "prompt-utf8-over-limit": (valid_create(prompt="é" * (LIMIT // 2 + 1)), "prompt"),
    "prompt-3-MiB": (valid_create(prompt="x" * 3 * 1024 * 1024), "prompt"),
    "prompt-nul": (valid_create(prompt="a\x00b"), "prompt"),
    "prompt-lone-surrogate": (valid_create(prompt="a\ud800b"), "prompt"),
    "context-over-limit": (valid_create(context="x" * (LIMIT + 1)), "context"),
    "context-nul": (valid_create(context="\x00"), "context"),
    "crew-id-number": (valid_create(crew_id=7), "crew_id"),
    "execution-id-missing": (valid_create(execution_id=...), "execution_id"),
    "execution-id-invalid": (valid_create(execution_id="bad$id"), "execution_id"),
    "execution-id-number": (valid_create(execution_id=12), "execution_id"),
    "reason-flags-string-value": (valid_create(reason_flags={"ambiguity": "yes"}), "reason_flags"),
    "reason-flags-list": (valid_create(reason_flags=[True]), "reason_flags"),
    "timeout-string": (valid_create(timeout_seconds="10"), "timeout_seconds"),
    "timeout-bool": (valid_create(timeout_seconds=True), "timeout_seconds"),
    "timeout-negative": (valid_create(timeout_seconds=-1), "timeout_seconds"),
    "timeout-zero": (valid_create(timeout_seconds=0), "timeout_seconds"),
    "timeout-over-max": (valid_create(timeout_seconds=10**9), "timeout_seconds"),
    "timeout-overflowing-float": (
        b'{"execution_id": "e", "prompt": "p", "timeout_seconds": 1e999}',
        "timeout_seconds",
    ),
    "metadata-list": (valid_create(metadata=[1]), "metadata"),
    "metadata-string": (valid_create(metadata="{}"), "metadata"),
    "metadata-nul": (valid_create(metadata={"note": "a\x00b"}), "metadata"),
    "metadata-lone-surrogate": (valid_create(metadata={"note": "\ud800"}), "metadata"),
    "reason-flags-nul-name": (valid_create(reason_flags={"a\x00": True}), "reason_flags"),
    "metadata-overflowing-float": (
        b'{"execution_id": "e", "prompt": "p", "metadata": {"big": 1e999}}',
        "metadata",
    ),
    "unknown-field": (valid_create(priority="high"), "priority"),
}
RESPOND_FIELD_ERRORS = {
    "response-number": ({"response": 5}, "response"),
    "response-null": ({"response": None}, "response"),
    "response-missing": ({}, "response"),
    "response-over-limit": ({"response": "x" * (LIMIT + 1)}, "response"),
    "response-utf8-over-limit": ({"response": "€" * (LIMIT // 3 + 1)}, "response"),
    "response-nul": ({"response": "\x00"}, "response"),
    "response-lone-surrogate": ({"response": "\udfff"}, "response"),
    "unknown-field": ({"response": "ok", "by": "me"}, "by"),
}
TOKEN_FIELD_ERRORS = {
    "execution-id-number": ({"execution_id": 5, "scope": "read"}, "execution_id"),
    "execution-id-missing": ({"scope": "read"}, "execution_id"),
    "execution-id-invalid": ({"execution_id": "a b", "scope": "read"}, "execution_id"),
    "execution-id-nul": ({"execution_id": "a\x00", "scope": "read"}, "execution_id"),
    "scope-missing": ({"execution_id": EXEC}, "scope"),
    "scope-unknown": ({"execution_id": EXEC, "scope": "admin"}, "scope"),
    "ttl-string": ({"execution_id": EXEC, "scope": "read", "ttl_seconds": "60"}, "ttl_seconds"),
    "ttl-zero": ({"execution_id": EXEC, "scope": "read", "ttl_seconds": 0}, "ttl_seconds"),
    "ttl-fraction": ({"execution_id": EXEC, "scope": "read", "ttl_seconds": 1.5}, "ttl_seconds"),
    "unknown-field": ({"execution_id": EXEC, "scope": "read", "admin": True}, "admin"),
}


def cases(endpoint: str, field_errors: dict[str, tuple[Any, str]], empty_field: str) -> list[Any]:
    table = [
        pytest.param(
            endpoint, body if isinstance(body, bytes) else as_json(body), field, id=f"{endpoint}-{name}"
        )
        for name, (body, field) in field_errors.items()
    ]
    table += [
        pytest.param(endpoint, as_json(value), "non_field_errors", id=f"{endpoint}-json-{name}")
        for name, value in NON_OBJECTS.items()
    ]
    table += [pytest.param(endpoint, b"", empty_field, id=f"{endpoint}-empty-body")]
    return table


BAD_BODIES = [
    *cases("create", CREATE_FIELD_ERRORS, "prompt"),
    *cases("respond", RESPOND_FIELD_ERRORS, "response"),
    *cases("tokens", TOKEN_FIELD_ERRORS, "scope"),
    *[
        pytest.param("cancel", as_json(value), "non_field_errors", id=f"cancel-json-{name}")
        for name, value in NON_OBJECTS.items()
    ],
    pytest.param("cancel", as_json({"reason": "x"}), "reason", id="cancel-unknown-field"),
]


@pytest.fixture
async def endpoint_url(api, execution_id) -> Any:
    async def url(endpoint: str) -> str:
        if endpoint == "create":
            return REQUESTS
        if endpoint == "tokens":
            return "/api/tokens"
        created = await create_request(api, execution_id)
        return f"{REQUESTS}/{created['id']}/{endpoint}"

    return url


@pytest.mark.parametrize(("endpoint", "body", "field"), BAD_BODIES)
async def test_bad_body_is_a_400_with_field_errors(api, endpoint_url, endpoint, body, field):
    url = await endpoint_url(endpoint)
    response = await api.post(url, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert field in response.json()["errors"]


@pytest.mark.parametrize("body", PARSE_ERRORS.values(), ids=PARSE_ERRORS.keys())
@pytest.mark.parametrize("endpoint", ["create", "respond", "cancel", "tokens"])
async def test_body_that_is_not_json_is_a_400_parse_error(api, endpoint_url, endpoint, body):
    url = await endpoint_url(endpoint)
    response = await api.post(url, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == "parse_error"


@pytest.mark.parametrize("body", [b"", b"{}"], ids=["empty", "empty-object"])
async def test_cancel_needs_no_body(api, execution_id, body):
    created = await create_request(api, execution_id)
    response = await api.post(
        f"{REQUESTS}/{created['id']}/cancel", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
