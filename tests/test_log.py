"""The read path: input checks every transport shares, ``events_after`` and ``LogFollower``."""

from __future__ import annotations

import uuid

import pytest
from channels.db import database_sync_to_async

from events_app import log, services
from events_app.exceptions import InvalidCursor, InvalidExecutionId, InvalidParameter
from events_app.log import LogFollower, events_after, resolve_cursor
from events_app.models import HumanInputEvent
from events_app.params import parse_bounded_number, parse_cursor, validate_execution_id

# --- execution ids --------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "a",
        "Z",
        "7",
        "x" * 128,
        "exec-2026.11.24_run:42",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-",
        ":",
        "...",
        "-_-",
    ],
)
def test_valid_execution_id_is_returned_unchanged(value):
    assert validate_execution_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * 129,
        "x" * 200,
        "has space",
        "a/b",
        "é",
        "exec-١٢٣",
        "$",
        "a\n",
        "a\x00b",
        "tab\t",
        None,
        42,
        b"bytes",
    ],
)
def test_invalid_execution_id_is_refused(value):
    with pytest.raises(InvalidExecutionId):
        validate_execution_id(value)


# --- cursors --------------------------------------------------------------


@pytest.mark.parametrize("value", [None, ""])
def test_absent_cursor_means_no_cursor(value):
    assert parse_cursor(value) is None


def test_canonical_uuid_cursor_is_parsed():
    event_id = uuid.uuid4()
    assert parse_cursor(str(event_id)) == event_id


def test_dashless_hex_cursor_is_parsed():
    event_id = uuid.uuid4()
    assert parse_cursor(event_id.hex) == event_id


def test_uppercase_uuid_cursor_is_the_same_cursor():
    event_id = uuid.uuid4()
    assert parse_cursor(str(event_id).upper()) == event_id


@pytest.mark.parametrize(
    "value",
    [
        "not-a-uuid",
        "1234",
        "g" * 32,
        "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
        str(uuid.UUID(int=1)) + "0",
        str(uuid.UUID(int=1))[:-1],
        "x" * 5000,
        " " + str(uuid.UUID(int=1)),
    ],
)
def test_malformed_cursor_is_refused(value):
    with pytest.raises(InvalidCursor):
        parse_cursor(value)


@pytest.mark.parametrize(
    "value",
    [
        "{" + uuid.UUID(int=1).hex + "}",
        "{" + str(uuid.UUID(int=1)) + "}",
        "urn:" + uuid.UUID(int=1).hex,
        "urn:uuid:" + str(uuid.UUID(int=1)),
        "0000-0000-0000-0000-" + "0" * 15 + "1",
    ],
    ids=["braces-hex", "braces", "urn-hex", "urn-uuid", "odd-hyphens"],
)
def test_other_uuid_spellings_are_refused(value):
    # uuid.UUID accepts all of these; a cursor is an event_id as we send it.
    with pytest.raises(InvalidCursor):
        parse_cursor(value)


@pytest.mark.django_db
def test_known_cursor_resolves_to_its_sequence(execution_id):
    for _ in range(3):
        services.request_create(execution_id=execution_id, prompt="?")
    second = HumanInputEvent.objects.get(execution_id=execution_id, sequence=2)
    assert resolve_cursor(execution_id=execution_id, cursor=second.event_id) == 2


@pytest.mark.django_db
def test_unknown_cursor_resolves_to_the_start_of_the_log(execution_id):
    services.request_create(execution_id=execution_id, prompt="?")
    assert resolve_cursor(execution_id=execution_id, cursor=uuid.uuid4()) == 0


@pytest.mark.django_db
def test_cursor_of_another_execution_resolves_to_the_start_of_the_log(execution_id, other_execution_id):
    services.request_create(execution_id=execution_id, prompt="?")
    services.request_create(execution_id=other_execution_id, prompt="?")
    services.request_create(execution_id=other_execution_id, prompt="?")
    foreign = HumanInputEvent.objects.get(execution_id=other_execution_id, sequence=2)
    assert resolve_cursor(execution_id=execution_id, cursor=foreign.event_id) == 0


def test_no_cursor_resolves_to_the_start_of_the_log(execution_id):
    assert resolve_cursor(execution_id=execution_id, cursor=None) == 0


# --- events_after ---------------------------------------------------------


def insert_events(execution_id: str, sequences: list[int]) -> None:
    """Log rows written directly, in the given (possibly shuffled) order."""
    request = services.request_create(execution_id=f"{execution_id}-requests", prompt="?")
    for sequence in sequences:
        HumanInputEvent.objects.create(
            execution_id=execution_id,
            sequence=sequence,
            type="human_input_required",
            payload={"execution_id": execution_id, "sequence": sequence},
            request=request,
        )


@pytest.mark.django_db
def test_events_after_returns_oldest_first_whatever_the_insert_order(execution_id):
    insert_events(execution_id, [3, 1, 5, 2, 4])
    found = events_after(execution_id=execution_id, after_sequence=0)
    assert [p["sequence"] for p in found] == [1, 2, 3, 4, 5]


@pytest.mark.django_db
def test_events_after_starts_past_the_given_sequence(execution_id):
    insert_events(execution_id, [1, 2, 3, 4])
    found = events_after(execution_id=execution_id, after_sequence=2)
    assert [p["sequence"] for p in found] == [3, 4]


@pytest.mark.django_db
def test_events_after_limit_keeps_the_oldest(execution_id):
    insert_events(execution_id, [4, 3, 2, 1])
    found = events_after(execution_id=execution_id, after_sequence=1, limit=2)
    assert [p["sequence"] for p in found] == [2, 3]


@pytest.mark.django_db
def test_events_after_reads_only_its_execution(execution_id, other_execution_id):
    services.request_create(execution_id=execution_id, prompt="mine")
    services.request_create(execution_id=other_execution_id, prompt="theirs")
    found = events_after(execution_id=execution_id, after_sequence=0)
    assert [p["prompt"] for p in found] == ["mine"]


@pytest.mark.django_db
def test_events_after_returns_the_stored_payloads(execution_id):
    services.request_create(execution_id=execution_id, prompt="?")
    stored = HumanInputEvent.objects.get(execution_id=execution_id)
    assert events_after(execution_id=execution_id, after_sequence=0) == [stored.payload]


# --- bounded numbers --------------------------------------------------------


def parse_limit(value):
    return parse_bounded_number(value, name="limit", default=100, minimum=1, maximum=1000, integer=True)


def parse_wait(value):
    return parse_bounded_number(value, name="wait", default=0, minimum=0, maximum=30, integer=False)


@pytest.mark.parametrize("value", [None, ""])
def test_absent_number_is_the_default(value):
    assert parse_limit(value) == 100


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("1000", 1000), ("250", 250)])
def test_integer_within_bounds_is_accepted_inclusively(value, expected):
    assert parse_limit(value) == expected


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("30", 30.0), ("2.5", 2.5), ("0.3", 0.3)])
def test_float_within_bounds_is_accepted_inclusively(value, expected):
    assert parse_wait(value) == expected


@pytest.mark.parametrize("value", ["0", "1001", "-1", "abc", "2.5", "1e3", " "])
def test_invalid_integer_is_an_invalid_parameter_naming_the_field(value):
    with pytest.raises(InvalidParameter) as refused:
        parse_limit(value)
    assert refused.value.as_dict()["field"] == "limit"


@pytest.mark.parametrize("value", ["-1", "31", "nan", "NaN", "inf", "-inf", "abc", "30.0001"])
def test_invalid_float_is_an_invalid_parameter_naming_the_field(value):
    with pytest.raises(InvalidParameter) as refused:
        parse_wait(value)
    assert refused.value.as_dict()["field"] == "wait"


# --- LogFollower ------------------------------------------------------------


@pytest.fixture
def log_reads(monkeypatch):
    """Every read the follower makes from the log, recorded; the reads themselves go through."""
    reads: list[dict] = []
    real_read = log.aevents_after

    async def recording_read(**kwargs):
        reads.append(kwargs)
        return await real_read(**kwargs)

    monkeypatch.setattr(log, "aevents_after", recording_read)
    return reads


def payload(sequence: int) -> dict:
    return {"type": "human_input_required", "sequence": sequence, "event_id": str(uuid.uuid4())}


create_request = database_sync_to_async(services.request_create)


async def test_next_sequence_doorbell_passes_its_payload_without_reading_the_log(execution_id, log_reads):
    follower = LogFollower(execution_id=execution_id, after_sequence=4)
    carried = payload(5)
    assert await follower.on_doorbell(sequence=5, payload=carried) == [carried]
    assert log_reads == []
    assert follower.position == 5


async def test_consecutive_doorbells_each_pass_straight_on(execution_id, log_reads):
    follower = LogFollower(execution_id=execution_id, after_sequence=0)
    first, second = payload(1), payload(2)
    assert await follower.on_doorbell(sequence=1, payload=first) == [first]
    assert await follower.on_doorbell(sequence=2, payload=second) == [second]
    assert log_reads == []


@pytest.mark.parametrize("sequence", [3, 1])
async def test_duplicate_or_old_doorbell_is_ignored_without_reading(execution_id, log_reads, sequence):
    follower = LogFollower(execution_id=execution_id, after_sequence=3)
    assert await follower.on_doorbell(sequence=sequence, payload=payload(sequence)) == []
    assert log_reads == []
    assert follower.position == 3


@pytest.mark.django_db(transaction=True)
async def test_doorbell_after_a_gap_reads_the_missing_range_in_order(execution_id, log_reads):
    for _ in range(3):
        await create_request(execution_id=execution_id, prompt="?")
    follower = LogFollower(execution_id=execution_id, after_sequence=0)
    events = await follower.on_doorbell(sequence=3, payload=payload(3))
    assert [e["sequence"] for e in events] == [1, 2, 3]
    assert all(e["execution_id"] == execution_id for e in events)
    assert [r["after_sequence"] for r in log_reads] == [0]
    assert follower.position == 3


@pytest.mark.django_db(transaction=True)
async def test_next_sequence_doorbell_without_payload_reads_the_log(execution_id):
    await create_request(execution_id=execution_id, prompt="?")
    follower = LogFollower(execution_id=execution_id, after_sequence=0)
    events = await follower.on_doorbell(sequence=1, payload=None)
    assert [e["sequence"] for e in events] == [1]


@pytest.mark.django_db(transaction=True)
async def test_catch_up_returns_what_is_new_once(execution_id):
    await create_request(execution_id=execution_id, prompt="?")
    await create_request(execution_id=execution_id, prompt="?")
    follower = LogFollower(execution_id=execution_id, after_sequence=0)
    assert [e["sequence"] for e in await follower.catch_up()] == [1, 2]
    assert await follower.catch_up() == []


@pytest.mark.django_db(transaction=True)
async def test_doorbell_for_an_event_already_caught_up_is_ignored(execution_id):
    await create_request(execution_id=execution_id, prompt="?")
    follower = LogFollower(execution_id=execution_id, after_sequence=0)
    [event] = await follower.catch_up()
    assert await follower.on_doorbell(sequence=1, payload=event) == []


@pytest.mark.django_db(transaction=True)
async def test_catch_up_reads_past_the_page_size(execution_id):
    for _ in range(5):
        await create_request(execution_id=execution_id, prompt="?")
    follower = LogFollower(execution_id=execution_id, after_sequence=0, page_size=2)
    assert [e["sequence"] for e in await follower.catch_up()] == [1, 2, 3, 4, 5]


@pytest.mark.django_db(transaction=True)
async def test_catch_up_stops_at_max_read_and_resumes_there(execution_id):
    for _ in range(5):
        await create_request(execution_id=execution_id, prompt="?")
    follower = LogFollower(execution_id=execution_id, after_sequence=0, max_read=3, page_size=2)
    assert [e["sequence"] for e in await follower.catch_up()] == [1, 2, 3]
    assert follower.position == 3
