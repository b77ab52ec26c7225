"""The OpenAPI document: served, valid, complete, and true to what the API really answers."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

import pytest
from django.test import Client, override_settings
from drf_spectacular.validation import validate_schema
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from events_app.auth import issue_token
from events_app.conf import humaninput_settings

pytestmark = pytest.mark.django_db(transaction=True)

SCHEMA_URI = "urn:humaninput:openapi"
REQUESTS = "/api/human-input/requests"
DOCUMENTED = {
    ("/api/human-input/requests", "get"),
    ("/api/human-input/requests", "post"),
    ("/api/human-input/requests/{request_id}", "get"),
    ("/api/human-input/requests/{request_id}/respond", "post"),
    ("/api/human-input/requests/{request_id}/cancel", "post"),
    ("/api/tokens", "post"),
    ("/poll/human-input/{execution_id}", "get"),
    ("/health", "get"),
    ("/events/human-input/{execution_id}", "get"),
}


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    response = Client().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return json.loads(response.content)


@pytest.fixture
def api(client, api_key) -> Client:
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    return client


def test_schema_is_served_as_json(client):
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    assert "json" in response["Content-Type"]
    assert isinstance(json.loads(response.content), dict)


def test_schema_is_openapi_3_1(openapi):
    assert openapi["openapi"].startswith("3.1.")


def test_schema_passes_the_openapi_validator(openapi):
    validate_schema(openapi)


def test_schema_documents_every_endpoint(openapi):
    documented = {(path, method) for path, operations in openapi["paths"].items() for method in operations}
    assert documented >= DOCUMENTED


def test_docs_page_is_served(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")


# --- real responses against the schema ------------------------------------------


def schema_errors(openapi: dict[str, Any], path: str, method: str, response: Any) -> list[str]:
    """Where the JSON body of ``response`` breaks the schema of ``path``+``method``+status."""
    status = str(response.status_code)
    responses = openapi["paths"][path][method]["responses"]
    assert status in responses, f"{method.upper()} {path} does not document status {status}"
    assert "application/json" in responses[status].get("content", {}), f"no JSON body documented for {status}"
    pointer = "/".join(
        part.replace("~", "~0").replace("/", "~1")
        for part in ["", "paths", path, method, "responses", status, "content", "application/json", "schema"]
    )
    registry = Registry().with_resource(
        SCHEMA_URI, Resource.from_contents(openapi, default_specification=DRAFT202012)
    )
    validator = Draft202012Validator(
        {"$ref": f"{SCHEMA_URI}#{quote(pointer, safe='/~')}"},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    body = json.loads(response.content)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]


def create(api: Client, execution_id: str, **fields: Any) -> Any:
    body = {"execution_id": execution_id, "prompt": "Ship it?", "timeout_seconds": 600, **fields}
    return api.post(REQUESTS, body, content_type="application/json")


def respond(api: Client, request_id: str, answer: str) -> Any:
    return api.post(f"{REQUESTS}/{request_id}/respond", {"response": answer}, content_type="application/json")


def real_create_201(api, execution_id):
    return create(api, execution_id, metadata={"ticket": 1}, reason_flags={"ambiguity": True})


def real_list_200(api, execution_id):
    create(api, execution_id)
    return api.get(REQUESTS, {"execution_id": execution_id, "page_size": 1})


def real_detail_200(api, execution_id):
    return api.get(f"{REQUESTS}/{create(api, execution_id).json()['id']}")


def real_detail_404(api, execution_id):
    return api.get(f"{REQUESTS}/{uuid.uuid4()}")


def real_respond_200(api, execution_id):
    return respond(api, create(api, execution_id).json()["id"], "Yes")


def real_respond_409(api, execution_id):
    request_id = create(api, execution_id).json()["id"]
    respond(api, request_id, "Yes")
    return respond(api, request_id, "No")


def real_cancel_409(api, execution_id):
    request_id = create(api, execution_id).json()["id"]
    respond(api, request_id, "Yes")
    return api.post(f"{REQUESTS}/{request_id}/cancel", content_type="application/json")


def real_tokens_201(api, execution_id):
    return api.post(
        "/api/tokens", {"execution_id": execution_id, "scope": "read"}, content_type="application/json"
    )


def real_poll_200(api, execution_id):
    respond(api, create(api, execution_id).json()["id"], "Yes")
    return api.get(f"/poll/human-input/{execution_id}")


def real_health_200(api, execution_id):
    return api.get("/health")


def real_create_400(api, execution_id):
    return api.post(REQUESTS, {"execution_id": "bad$id", "prompt": 5}, content_type="application/json")


def real_detail_401(api, execution_id):
    return api.get(f"{REQUESTS}/{uuid.uuid4()}", HTTP_AUTHORIZATION="Bearer not-the-key")


def real_respond_429(api, execution_id):
    request_id = create(api, execution_id).json()["id"]
    token, _ = issue_token(execution_id=execution_id, scope="respond")  # a caller with a budget of its own
    with override_settings(HUMANINPUT_THROTTLE_WRITE_RATE="1/min"):
        for answer in ["Yes", "again"]:
            response = api.post(
                f"{REQUESTS}/{request_id}/respond",
                {"response": answer},
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {token}",
            )
    return response


REAL_RESPONSES = [
    ("/api/human-input/requests", "post", 201, real_create_201),
    ("/api/human-input/requests", "get", 200, real_list_200),
    ("/api/human-input/requests/{request_id}", "get", 200, real_detail_200),
    ("/api/human-input/requests/{request_id}", "get", 404, real_detail_404),
    ("/api/human-input/requests/{request_id}/respond", "post", 200, real_respond_200),
    ("/api/human-input/requests/{request_id}/respond", "post", 409, real_respond_409),
    ("/api/human-input/requests/{request_id}/cancel", "post", 409, real_cancel_409),
    ("/api/tokens", "post", 201, real_tokens_201),
    ("/poll/human-input/{execution_id}", "get", 200, real_poll_200),
    ("/health", "get", 200, real_health_200),
    ("/api/human-input/requests", "post", 400, real_create_400),
    ("/api/human-input/requests/{request_id}", "get", 401, real_detail_401),
    ("/api/human-input/requests/{request_id}/respond", "post", 429, real_respond_429),
]


@pytest.mark.parametrize(
    ("path", "method", "status", "make"),
    REAL_RESPONSES,
    ids=[f"{method}-{path}-{status}" for path, method, status, _ in REAL_RESPONSES],
)
def test_real_response_matches_the_schema(openapi, api, execution_id, path, method, status, make):
    response = make(api, execution_id)
    assert response.status_code == status, response.content
    assert schema_errors(openapi, path, method, response) == []


# --- the schema admits exactly what the server accepts -------------------------------
#
# Regressions found by schema fuzzing (tests/e2e/test_schema_fuzz.py): each row is an input,
# whether the schema admits it, and the server's answer. The two must agree.


def fragment_validator(openapi: dict[str, Any], *pointer: str) -> Draft202012Validator:
    encoded = "/".join(part.replace("~", "~0").replace("/", "~1") for part in ("", *pointer))
    registry = Registry().with_resource(
        SCHEMA_URI, Resource.from_contents(openapi, default_specification=DRAFT202012)
    )
    return Draft202012Validator(
        {"$ref": f"{SCHEMA_URI}#{quote(encoded, safe='/~')}"},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def parameter_validator(openapi: dict[str, Any], path: str, method: str, name: str) -> Draft202012Validator:
    parameters = openapi["paths"][path][method]["parameters"]
    index = next(i for i, parameter in enumerate(parameters) if parameter["name"] == name)
    return fragment_validator(openapi, "paths", path, method, "parameters", str(index), "schema")


def create_body(**fields: Any):
    return lambda execution_id: {"execution_id": execution_id, "prompt": "Ship it?", **fields}


def token_body(**fields: Any):
    return lambda execution_id: {"execution_id": execution_id, "scope": "read", **fields}


MAX_TIMEOUT = humaninput_settings.MAX_TIMEOUT_SECONDS
MAX_TTL = humaninput_settings.TOKEN_MAX_TTL_SECONDS
BODIES = {
    "execution-id-off-pattern": (REQUESTS, lambda _: {"execution_id": "bad id", "prompt": "p"}, False, 400),
    "blank-prompt": (REQUESTS, create_body(prompt=""), False, 400),
    "nul-in-prompt": (REQUESTS, create_body(prompt="a\x00b"), False, 400),
    "blank-context": (REQUESTS, create_body(context=""), True, 201),
    "unknown-field": (REQUESTS, create_body(priority=1), False, 400),
    "metadata-array": (REQUESTS, create_body(metadata=[1]), False, 400),
    "metadata-nul-deep": (REQUESTS, create_body(metadata={"k": [{"x": "a\x00"}]}), False, 400),
    "metadata-nested": (REQUESTS, create_body(metadata={"k": [1, {"x": None}], "": "é"}), True, 201),
    "flag-name-with-nul": (REQUESTS, create_body(reason_flags={"a\x00": True}), False, 400),
    "33-flags": (REQUESTS, create_body(reason_flags={f"f{i}": True for i in range(33)}), False, 400),
    "timeout-over-max": (REQUESTS, create_body(timeout_seconds=MAX_TIMEOUT * 2), False, 400),
    "token-ttl-integral-float": ("/api/tokens", token_body(ttl_seconds=60.0), True, 201),
    "token-ttl-over-max": ("/api/tokens", token_body(ttl_seconds=MAX_TTL + 1), False, 400),
    "token-blank-execution-id": ("/api/tokens", lambda _: {"execution_id": "", "scope": "read"}, False, 400),
}


@pytest.mark.parametrize(("path", "make_body", "admitted", "status"), BODIES.values(), ids=BODIES.keys())
def test_schema_admits_a_body_exactly_when_the_server_accepts_it(
    openapi, api, execution_id, path, make_body, admitted, status
):
    body = make_body(execution_id)
    validator = fragment_validator(
        openapi, "paths", path, "post", "requestBody", "content", "application/json", "schema"
    )
    assert validator.is_valid(body) is admitted
    response = api.post(path, body, content_type="application/json")
    assert response.status_code == status, response.content


POLL = "/poll/human-input/{execution_id}"
MAX_LIMIT = humaninput_settings.POLL_MAX_LIMIT
# (path, parameter, the value as the schema types it, the query string sent, admitted, status)
QUERIES = {
    "list-empty-execution-id": (REQUESTS, "execution_id", "", {"execution_id": ""}, False, 400),
    "list-empty-status": (REQUESTS, "status", "", {"status": ""}, False, 400),
    "list-status-twice": (
        REQUESTS,
        "status",
        ["pending", "expired"],
        {"status": ["pending", "expired"]},
        False,
        400,
    ),
    "poll-limit-0": (POLL, "limit", 0, {"limit": "0"}, False, 400),
    "poll-limit-max": (POLL, "limit", MAX_LIMIT, {"limit": str(MAX_LIMIT)}, True, 200),
    "poll-limit-over-max": (POLL, "limit", MAX_LIMIT + 1, {"limit": str(MAX_LIMIT + 1)}, False, 400),
    "poll-limit-empty": (POLL, "limit", "", {"limit": ""}, True, 200),
    "poll-limit-twice": (POLL, "limit", [1, 5], {"limit": ["1", "5"]}, False, 400),
    "poll-wait-over-max": (POLL, "wait", 1e6, {"wait": "1e6"}, False, 400),
    "poll-cursor-empty": (POLL, "last_event_id", "", {"last_event_id": ""}, True, 200),
    "poll-cursor-hex": (POLL, "last_event_id", "0" * 32, {"last_event_id": "0" * 32}, True, 200),
    "poll-cursor-malformed": (
        POLL,
        "last_event_id",
        "not-a-uuid",
        {"last_event_id": "not-a-uuid"},
        False,
        400,
    ),
}


@pytest.mark.parametrize(
    ("path", "name", "typed", "query", "admitted", "status"), QUERIES.values(), ids=QUERIES.keys()
)
def test_schema_admits_a_query_parameter_exactly_when_the_server_accepts_it(
    openapi, api, execution_id, path, name, typed, query, admitted, status
):
    assert parameter_validator(openapi, path, "get", name).is_valid(typed) is admitted
    response = api.get(path.format(execution_id=execution_id), query)
    assert response.status_code == status, response.content


@pytest.mark.parametrize("suffix", ["", "/respond", "/cancel"])
@pytest.mark.parametrize(
    ("request_id", "admitted", "status"), [("0", False, 400), (str(uuid.uuid4()), True, 404)]
)
def test_schema_admits_a_request_id_exactly_when_the_server_accepts_it(
    openapi, api, suffix, request_id, admitted, status
):
    path, method = REQUESTS + "/{request_id}" + suffix, "post" if suffix else "get"
    assert parameter_validator(openapi, path, method, "request_id").is_valid(request_id) is admitted
    url = f"{REQUESTS}/{request_id}{suffix}"
    response = api.post(url, {"response": "Yes"}, content_type="application/json") if suffix else api.get(url)
    assert response.status_code == status, response.content


def test_every_operation_that_can_answer_401_declares_the_credentials_it_takes(openapi):
    undeclared = [
        f"{method.upper()} {path}"
        for path, operations in openapi["paths"].items()
        for method, operation in operations.items()
        if "401" in operation["responses"] and not operation.get("security", openapi.get("security"))
    ]
    assert undeclared == []
