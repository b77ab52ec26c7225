"""The service layer: the only write path (create / respond / cancel / expire)."""

from __future__ import annotations

import re
import threading
import uuid
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from events_app import services
from events_app.exceptions import (
    AlreadyAnswered,
    AlreadyResolved,
    InvalidExecutionId,
    InvalidParameter,
    NotFound,
)
from events_app.models import EventType, HumanInputEvent, HumanInputRequest, RequestStatus

pytestmark = pytest.mark.django_db

IDENTITY_FIELDS = {"type", "execution_id", "crew_id", "task_id", "agent_id"}
REQUIRED_FIELDS = IDENTITY_FIELDS | {
    "prompt",
    "context",
    "timestamp",
    "event_id",
    "reason_flags",
    "request_id",
    "sequence",
}
COMPLETED_FIELDS = IDENTITY_FIELDS | {"event_id", "human_feedback", "timestamp", "request_id", "sequence"}
RESOLVED_FIELDS = IDENTITY_FIELDS | {"request_id", "sequence", "timestamp", "event_id"}
UTC_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$")


class Boom(Exception):
    pass


def events_of(execution_id: str) -> list[HumanInputEvent]:
    return list(HumanInputEvent.objects.filter(execution_id=execution_id).order_by("sequence"))


def create(execution_id: str, **kwargs) -> HumanInputRequest:
    kwargs.setdefault("prompt", "Approve the plan?")
    return services.request_create(execution_id=execution_id, **kwargs)


# --- create ---------------------------------------------------------------


def test_required_event_has_exactly_the_spec_fields(execution_id):
    create(execution_id)
    [event] = events_of(execution_id)
    assert set(event.payload) == REQUIRED_FIELDS


def test_required_event_carries_the_request_as_given(execution_id):
    request = create(
        execution_id,
        prompt="Which region?",
        crew_id="crew-1",
        task_id="task-2",
        agent_id="agent-3",
        context="We deploy on Friday.",
        reason_flags={"ambiguity": True, "missing_field": False},
    )
    [event] = events_of(execution_id)
    assert event.type == EventType.REQUIRED
    assert event.payload == {
        "type": "human_input_required",
        "execution_id": execution_id,
        "crew_id": "crew-1",
        "task_id": "task-2",
        "agent_id": "agent-3",
        "prompt": "Which region?",
        "context": "We deploy on Friday.",
        "timestamp": event.payload["timestamp"],
        "event_id": str(event.event_id),
        "reason_flags": {"ambiguity": True, "missing_field": False},
        "request_id": str(request.id),
        "sequence": 1,
    }


def test_required_event_timestamp_is_utc_iso8601_with_microseconds(execution_id):
    request = create(execution_id)
    [event] = events_of(execution_id)
    timestamp = event.payload["timestamp"]
    assert UTC_TIMESTAMP.match(timestamp), timestamp
    assert datetime.fromisoformat(timestamp) == request.created_at


def test_reason_flags_default_to_both_false(execution_id):
    create(execution_id)
    [event] = events_of(execution_id)
    assert event.payload["reason_flags"] == {"ambiguity": False, "missing_field": False}


def test_given_reason_flags_are_merged_over_the_defaults(execution_id):
    request = create(execution_id, reason_flags={"missing_field": True})
    assert request.reason_flags == {"ambiguity": False, "missing_field": True}


def test_created_request_is_pending_with_no_expiry_by_default(execution_id):
    request = create(execution_id)
    request.refresh_from_db()
    assert request.status == RequestStatus.PENDING
    assert request.expires_at is None


def test_timeout_sets_expiry_after_creation(execution_id):
    request = create(execution_id, timeout_seconds=90)
    assert request.expires_at == request.created_at + timedelta(seconds=90)


def test_sequences_count_per_execution(execution_id, other_execution_id):
    for _ in range(3):
        create(execution_id)
        create(other_execution_id)
    assert [e.sequence for e in events_of(execution_id)] == [1, 2, 3]
    assert [e.sequence for e in events_of(other_execution_id)] == [1, 2, 3]


@pytest.mark.parametrize("bad_id", ["", "has space", "a/b", "x" * 129, "é"])
def test_invalid_execution_id_is_refused_and_nothing_is_written(bad_id):
    with pytest.raises(InvalidExecutionId):
        services.request_create(execution_id=bad_id, prompt="?")
    assert not HumanInputRequest.objects.exists()
    assert not HumanInputEvent.objects.exists()


# --- respond --------------------------------------------------------------


def test_answer_completes_the_request(execution_id):
    request = create(execution_id)
    services.request_respond(request_id=request.id, response="Yes", responded_by="alice")
    request.refresh_from_db()
    assert (request.status, request.response, request.responded_by) == (
        RequestStatus.COMPLETED,
        "Yes",
        "alice",
    )
    assert request.responded_at is not None


def test_answer_appends_a_completed_event_with_the_spec_fields(execution_id):
    request = create(execution_id, crew_id="c", task_id="t", agent_id="a")
    services.request_respond(request_id=str(request.id), response="Ship it")
    completed = events_of(execution_id)[1]
    assert set(completed.payload) == COMPLETED_FIELDS
    assert completed.payload == {
        "type": "human_input_completed",
        "execution_id": execution_id,
        "crew_id": "c",
        "task_id": "t",
        "agent_id": "a",
        "event_id": str(completed.event_id),
        "human_feedback": "Ship it",
        "timestamp": completed.payload["timestamp"],
        "request_id": str(request.id),
        "sequence": 2,
    }
    assert UTC_TIMESTAMP.match(completed.payload["timestamp"])


def test_every_event_has_its_own_event_id(execution_id):
    request = create(execution_id)
    services.request_respond(request_id=request.id, response="ok")
    required, completed = events_of(execution_id)
    assert required.payload["event_id"] != completed.payload["event_id"]
    assert required.payload["request_id"] == completed.payload["request_id"]


def test_second_answer_is_refused_as_already_answered(execution_id):
    request = create(execution_id)
    services.request_respond(request_id=request.id, response="first")
    with pytest.raises(AlreadyAnswered) as refused:
        services.request_respond(request_id=request.id, response="second")
    assert refused.value.extra["status"] == RequestStatus.COMPLETED


def test_second_answer_changes_nothing_and_writes_no_event(execution_id):
    request = create(execution_id)
    services.request_respond(request_id=request.id, response="first", responded_by="alice")
    with pytest.raises(AlreadyAnswered):
        services.request_respond(request_id=request.id, response="second", responded_by="bob")
    request.refresh_from_db()
    assert (request.response, request.responded_by) == ("first", "alice")
    assert [e.type for e in events_of(execution_id)] == [EventType.REQUIRED, EventType.COMPLETED]


def test_cancel_after_answer_is_refused_as_already_resolved(execution_id):
    request = create(execution_id)
    services.request_respond(request_id=request.id, response="yes")
    with pytest.raises(AlreadyResolved):
        services.request_cancel(request_id=request.id)
    request.refresh_from_db()
    assert request.status == RequestStatus.COMPLETED
    assert len(events_of(execution_id)) == 2


def test_answer_after_cancel_is_refused_as_conflict(execution_id):
    request = create(execution_id)
    services.request_cancel(request_id=request.id, cancelled_by="ops")
    with pytest.raises(AlreadyResolved) as refused:
        services.request_respond(request_id=request.id, response="too late")
    assert not isinstance(refused.value, AlreadyAnswered)
    assert refused.value.as_dict()["code"] == "conflict"
    assert refused.value.extra["status"] == RequestStatus.CANCELLED
    request.refresh_from_db()
    assert (request.status, request.response) == (RequestStatus.CANCELLED, "")


def test_cancel_appends_a_cancelled_event_with_the_spec_fields(execution_id):
    request = create(execution_id)
    services.request_cancel(request_id=request.id)
    cancelled = events_of(execution_id)[1]
    assert cancelled.type == EventType.CANCELLED
    assert set(cancelled.payload) == RESOLVED_FIELDS
    assert (cancelled.payload["request_id"], cancelled.payload["sequence"]) == (str(request.id), 2)


def test_answer_with_another_execution_id_is_not_found_and_changes_nothing(execution_id, other_execution_id):
    request = create(execution_id)
    with pytest.raises(NotFound):
        services.request_respond(request_id=request.id, response="x", execution_id=other_execution_id)
    request.refresh_from_db()
    assert request.status == RequestStatus.PENDING
    assert len(events_of(execution_id)) == 1


def test_answer_with_its_own_execution_id_is_accepted(execution_id):
    request = create(execution_id)
    answered = services.request_respond(request_id=request.id, response="x", execution_id=execution_id)
    assert answered.status == RequestStatus.COMPLETED


def test_answer_to_unknown_request_is_not_found():
    with pytest.raises(NotFound):
        services.request_respond(request_id=uuid.uuid4(), response="x")


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", "1234", 123, None, ["x"]])
def test_malformed_request_id_is_an_invalid_parameter(bad_id):
    with pytest.raises(InvalidParameter) as refused:
        services.request_respond(request_id=bad_id, response="x")
    assert refused.value.extra["field"] == "request_id"


# --- expiry ---------------------------------------------------------------


def test_due_request_is_expired_with_its_event(execution_id):
    request = create(execution_id, timeout_seconds=60)
    expired = services.requests_expire_due(now=timezone.now() + timedelta(seconds=61))
    assert [r.id for r in expired] == [request.id]
    request.refresh_from_db()
    assert request.status == RequestStatus.EXPIRED
    event = events_of(execution_id)[1]
    assert event.type == EventType.EXPIRED
    assert set(event.payload) == RESOLVED_FIELDS
    assert event.payload["sequence"] == 2


def test_expire_due_leaves_requests_not_yet_due_or_without_timeout(execution_id):
    later = create(execution_id, timeout_seconds=600)
    forever = create(execution_id)
    assert services.requests_expire_due(now=timezone.now() + timedelta(seconds=60)) == []
    statuses = set(
        HumanInputRequest.objects.filter(id__in=[later.id, forever.id]).values_list("status", flat=True)
    )
    assert statuses == {RequestStatus.PENDING}


def test_expire_due_keeps_an_answer_given_in_time(execution_id):
    request = create(execution_id, timeout_seconds=60)
    services.request_respond(request_id=request.id, response="in time")
    assert services.requests_expire_due(now=timezone.now() + timedelta(seconds=61)) == []
    request.refresh_from_db()
    assert request.status == RequestStatus.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_answer_to_overdue_request_is_refused_and_it_stays_expired_with_its_event(execution_id):
    request = create(execution_id, timeout_seconds=60)
    HumanInputRequest.objects.filter(pk=request.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(AlreadyResolved) as refused:
        services.request_respond(request_id=request.id, response="late")
    assert refused.value.extra["status"] == RequestStatus.EXPIRED
    request.refresh_from_db()
    assert (request.status, request.response) == (RequestStatus.EXPIRED, "")
    assert [e.type for e in events_of(execution_id)] == [EventType.REQUIRED, EventType.EXPIRED]


# --- one transaction per write ----------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_failure_after_request_insert_leaves_neither_request_nor_event(execution_id, monkeypatch):
    def explode(**kwargs):
        raise Boom

    monkeypatch.setattr(services, "build_payload", explode)
    with pytest.raises(Boom):
        create(execution_id)
    assert not HumanInputRequest.objects.filter(execution_id=execution_id).exists()
    assert not HumanInputEvent.objects.filter(execution_id=execution_id).exists()


@pytest.mark.django_db(transaction=True)
def test_failed_write_gives_its_sequence_back(execution_id, monkeypatch):
    real_build_payload = services.build_payload

    def explode(**kwargs):
        raise Boom

    monkeypatch.setattr(services, "build_payload", explode)
    with pytest.raises(Boom):
        create(execution_id)
    monkeypatch.setattr(services, "build_payload", real_build_payload)
    create(execution_id)
    assert [e.sequence for e in events_of(execution_id)] == [1]


@pytest.mark.django_db(transaction=True)
def test_failure_while_answering_leaves_the_request_pending(execution_id, monkeypatch):
    request = create(execution_id)

    def explode(**kwargs):
        raise Boom

    monkeypatch.setattr(services, "_append_event", explode)
    with pytest.raises(Boom):
        services.request_respond(request_id=request.id, response="lost")
    request.refresh_from_db()
    assert (request.status, request.response) == (RequestStatus.PENDING, "")
    assert len(events_of(execution_id)) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_answers_have_exactly_one_winner(execution_id):
    request = create(execution_id)
    contenders = 6
    barrier = threading.Barrier(contenders)
    outcomes: list[str] = []
    lock = threading.Lock()

    def answer(number: int) -> None:
        try:
            barrier.wait(timeout=30)
            try:
                services.request_respond(request_id=request.id, response=f"answer {number}")
                outcome = "won"
            except AlreadyAnswered:
                outcome = "refused"
            except Exception as error:
                outcome = repr(error)
            with lock:
                outcomes.append(outcome)
        finally:
            connection.close()

    threads = [threading.Thread(target=answer, args=(n,)) for n in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["refused"] * (contenders - 1) + ["won"]
    assert [e.type for e in events_of(execution_id)] == [EventType.REQUIRED, EventType.COMPLETED]


@pytest.mark.parametrize(
    "spelling",
    [
        lambda value: f"{{{value}}}",
        lambda value: value.urn,
        lambda value: f" {value} ",
        lambda value: str(value).translate(str.maketrans("0123456789", "０１２３４５６７８９")),  # noqa: RUF001
        lambda value: str(value).replace("-", "")[:-1],
    ],
    ids=["braces", "urn", "spaces", "fullwidth-digits", "31-hex-digits"],
)
def test_a_request_id_has_one_spelling(spelling):
    """What ``uuid.UUID`` would also take is refused, as cursors are: an id is written one way."""
    value = uuid.uuid4()
    with pytest.raises(InvalidParameter):
        services.coerce_request_id(spelling(value))
    assert services.coerce_request_id(str(value).upper()) == value
    assert services.coerce_request_id(value.hex) == value
