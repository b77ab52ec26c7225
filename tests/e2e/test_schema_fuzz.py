"""Schema fuzzing of a real daphne against the OpenAPI document it serves itself.

schemathesis reads ``/api/schema/`` from the running server, generates
requests for every operation in it (valid ones, and ones that break the
schema on purpose), sends them over real sockets and runs all its checks on
each answer: never a 5xx; the status code, content type, headers and body
documented; schema-valid input accepted and schema-invalid input refused
with a 4xx; auth enforced where the schema declares it. A second test sends
every operation missing or wrong credentials and expects a documented 401.

``HUMANINPUT_FUZZ_EXAMPLES`` sets the generated cases per operation (200 by
default, what CI runs). ``HUMANINPUT_FUZZ_SEED`` sets the seed: fixed by
default, so CI runs the same cases every time; ``random`` draws a fresh one,
printed with the results so a failure can be replayed. No example database
is kept (``database=None``), so earlier runs change nothing. See docs/fuzzing.md.
"""

from __future__ import annotations

import json
import os
import random
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from daphne.utils import INVALID_HEADER_VALUE_BYTES
from django.conf import settings as django_settings
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from events_app.params import EXECUTION_ID_RE

from .conftest import CATCH_UP_SECONDS, DEADLINE, DaphneServer, bearer, running_server, sse_connect

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

EXAMPLES = int(os.environ.get("HUMANINPUT_FUZZ_EXAMPLES", "200"))
BAD_CREDENTIAL_EXAMPLES = max(25, EXAMPLES // 4)
_SEED = os.environ.get("HUMANINPUT_FUZZ_SEED", "20260101")
SEED = random.SystemRandom().getrandbits(64) if _SEED == "random" else int(_SEED)
API_KEY = django_settings.HUMANINPUT_API_KEY


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        database=None,  # no example database: the seed alone decides the cases
        deadline=None,  # a request's time is the server's, not the test's
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


@pytest.fixture(scope="module")
def fuzz_server(django_db_setup, tmp_path_factory) -> Iterator[DaphneServer]:
    """A daphne whose open-ended answers end quickly: an SSE case is read up to its first
    message with data (the replayed log, or a heartbeat within 50 ms) and a long poll waits
    at most 0.2 s, so hundreds of cases of each take seconds."""
    with running_server(
        tmp_path_factory.mktemp("daphne-fuzz"),
        HUMANINPUT_CATCHUP_SECONDS=CATCH_UP_SECONDS,
        HUMANINPUT_SSE_HEARTBEAT_SECONDS="0.05",
        HUMANINPUT_POLL_MAX_WAIT_SECONDS="0.2",
    ) as started:
        yield started


def load_schema(server: DaphneServer, *, with_api_key: bool) -> schemathesis.BaseSchema:
    config: dict[str, Any] = {
        "seed": SEED,
        # An event stream never ends: keep it up to its first message with data, at most 5 s.
        "max-stream-events": 1,
        "request-timeout": 5,
    }
    if with_api_key:
        # Every security scheme the schema names, so any requirement it states is met.
        config["auth"] = {"openapi": {"bearer": {"bearer": API_KEY}, "tokenQuery": {"api_key": API_KEY}}}
    else:
        config["generation"] = {"with-security-parameters": False}
    loaded = schemathesis.openapi.from_url(
        f"{server.http_url}/api/schema/", config=schemathesis.Config.from_dict(config)
    )
    loaded.config.update(base_url=server.http_url)
    return loaded


@pytest.fixture(scope="module")
def authenticated_schema(fuzz_server) -> schemathesis.BaseSchema:
    print(f"HUMANINPUT_FUZZ_SEED={SEED} HUMANINPUT_FUZZ_EXAMPLES={EXAMPLES}")
    return load_schema(fuzz_server, with_api_key=True)


@pytest.fixture(scope="module")
def unauthenticated_schema(fuzz_server) -> schemathesis.BaseSchema:
    return load_schema(fuzz_server, with_api_key=False)


@pytest.fixture(scope="module")
def api(fuzz_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.http_url, headers=bearer(API_KEY), timeout=DEADLINE) as client:
        yield client


@pytest.fixture
def busy_execution(api) -> str:
    """An execution with a log (asked, answered, asked, cancelled), written through the server
    (per test: the transactional test case empties the database after each)."""
    execution_id = f"fuzz-busy-{uuid.uuid4().hex[:8]}"
    for settle in ("respond", "cancel"):
        request_id = create_pending_request(api, execution_id)
        body = {"response": "yes"} if settle == "respond" else None
        answered = api.post(f"/api/human-input/requests/{request_id}/{settle}", json=body)
        assert answered.status_code == 200, answered.text
    return execution_id


def create_pending_request(api: httpx.Client, execution_id: str) -> str:
    response = api.post(
        "/api/human-input/requests", json={"execution_id": execution_id, "prompt": "Ship it?"}
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def mint_token_id(api: httpx.Client, execution_id: str) -> str:
    response = api.post("/api/tokens", json={"execution_id": execution_id, "scope": "read"})
    assert response.status_code == 201, response.text
    return response.json()["token_id"]


def picks_live(value: str) -> bool:
    """Whether a generated id is swapped for a live one: half of them, decided by the id itself
    (so by the seed), so lookups that miss (404) stay fuzzed too."""
    return zlib.crc32(value.encode("utf-8", "surrogatepass")) % 2 == 0


def is_uuid(value: Any) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def point_at_live_resources(case: Any, api: httpx.Client, busy_execution: str) -> None:
    """Random ids name nothing, so every respond or cancel would stop at its 404 before its body
    is read. Half the well-formed ids become a fresh pending request, a freshly minted token or
    an execution with events; ill-formed ids stay as generated."""
    path = case.path_parameters
    if not path:
        return
    request_id, token_id, execution_id = (
        path.get(name) for name in ("request_id", "token_id", "execution_id")
    )
    if is_uuid(request_id) and picks_live(request_id):
        path["request_id"] = create_pending_request(api, f"fuzz-{uuid.uuid4().hex[:8]}")
    if isinstance(token_id, str) and picks_live(token_id):
        path["token_id"] = mint_token_id(api, f"fuzz-{uuid.uuid4().hex[:8]}")
    if isinstance(execution_id, str) and EXECUTION_ID_RE.fullmatch(execution_id) and picks_live(execution_id):
        path["execution_id"] = busy_execution


def requires_credentials(case: Any) -> bool:
    """Whether the schema says this operation needs credentials (no empty requirement)."""
    requirements = case.operation.definition.raw.get("security")
    if requirements is None:
        requirements = case.operation.schema.raw_schema.get("security", [])
    return bool(requirements) and all(requirements)


@pytest.fixture
def outcomes(authenticated_schema) -> Iterator[defaultdict[str, Counter[int]]]:
    """Status codes per operation; afterwards, proof the fuzzing reached every operation's
    handler with valid credentials (a check that never ran passes vacuously)."""
    seen: defaultdict[str, Counter[int]] = defaultdict(Counter)
    yield seen
    operations = {result.ok().label: result.ok() for result in authenticated_schema.get_all_operations()}
    cases = {label: sum(statuses.values()) for label, statuses in sorted(seen.items())}
    print(f"cases per operation: {cases}")
    assert set(seen) == set(operations), f"not fuzzed: {set(operations) - set(seen)}"
    succeeded = {label for label, statuses in seen.items() if any(200 <= code < 300 for code in statuses)}
    assert succeeded == set(operations), f"never answered 2xx: {set(operations) - succeeded}; {dict(seen)}"
    # An operation without inputs (GET /health) has only a few distinct requests to make.
    with_inputs = {
        label
        for label, operation in operations.items()
        if any(map(len, (operation.path_parameters, operation.query, operation.headers, operation.body)))
    }
    assert all(cases[label] >= EXAMPLES for label in with_inputs), f"fewer than {EXAMPLES} cases: {cases}"


authenticated = schemathesis.pytest.from_fixture("authenticated_schema")
unauthenticated = schemathesis.pytest.from_fixture("unauthenticated_schema")


@pytest.mark.timeout(300 + 1.5 * EXAMPLES)  # about 0.4 s per case of all operations, with margin
@fuzz_settings(EXAMPLES)
@authenticated.parametrize()
def test_every_operation_answers_as_its_schema_says(case, fuzz_server, api, busy_execution, outcomes):
    point_at_live_resources(case, api, busy_execution)
    response = case.call_and_validate(base_url=fuzz_server.http_url)
    outcomes[case.operation.label][response.status_code] += 1


# --- wrong or missing credentials -----------------------------------------------

# Header values as UTF-8 bytes (a non-ASCII token must be a 401, never a 500), without the
# bytes RFC 9110 forbids in a field value: daphne refuses those itself, before the app runs.
WRONG_BEARER_HEADER = (
    st.text(st.characters(min_codepoint=0x21, exclude_categories=("Cs", "Cc")), min_size=1, max_size=80)
    .filter(lambda token: token.strip() != API_KEY)
    .map(lambda token: f"Bearer {token}".encode())
    .filter(lambda value: not INVALID_HEADER_VALUE_BYTES.intersection(value))
)
Credentials = tuple[dict[str, Any], dict[str, str]]  # headers, query parameters

BAD_CREDENTIALS: st.SearchStrategy[Credentials] = st.one_of(
    st.just(({}, {})),
    WRONG_BEARER_HEADER.map(lambda value: ({"Authorization": value}, {})),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=80)
    .filter(lambda token: token.strip() != API_KEY)
    .map(lambda token: ({}, {"token": token})),
    st.sampled_from(
        [
            f"Basic {API_KEY}",
            f"Token {API_KEY}",
            API_KEY,
            "Bearer",
            f"Bearer {API_KEY[:-1]}",
            f"Bearer {API_KEY}x",
            f"Bearer {API_KEY.upper()}",
        ]
    ).map(lambda header: ({"Authorization": header}, {})),
)


@pytest.mark.timeout(120 + BAD_CREDENTIAL_EXAMPLES)
@fuzz_settings(BAD_CREDENTIAL_EXAMPLES)
@unauthenticated.parametrize()
@unauthenticated.given(credentials=BAD_CREDENTIALS)
def test_missing_or_wrong_credentials_get_a_documented_401(case, credentials, fuzz_server):
    headers, params = credentials
    response = case.call(base_url=fuzz_server.http_url, headers=headers, params=params)
    case.validate_response(response, headers=headers)
    if requires_credentials(case):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == ['Bearer realm="humaninput"']


# --- the stream's documented message shape ------------------------------------------


async def test_every_stream_message_matches_the_documented_message_schema(
    fuzz_server, busy_execution, authenticated_schema
):
    """The schema used to call the stream a string; tools read a ``text/event-stream`` schema
    as the shape of each message (``data``, ``id``, ...), so every event failed it."""
    content = authenticated_schema.raw_schema["paths"]["/events/human-input/{execution_id}"]["get"]
    message_schema = content["responses"]["200"]["content"]["text/event-stream"]["schema"]
    validator = Draft202012Validator(message_schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    data_schema = Draft202012Validator(message_schema["properties"]["data"]["contentSchema"])
    async with sse_connect(fuzz_server, busy_execution, headers=bearer(API_KEY)) as stream:
        messages = [await stream.next_message() for _ in range(7)]  # retry, 4 events, 2 heartbeats
    with_data = [message for message in messages if "data" in message]
    kinds = [json.loads(message["data"])["type"] for message in with_data]
    assert kinds[-1] == "heartbeat" and len(set(kinds)) == 4, kinds  # three event types, heartbeats
    for message in with_data:
        assert list(validator.iter_errors(message)) == []
        assert list(data_schema.iter_errors(json.loads(message["data"]))) == []
