"""Catch-up of idle subscribers: one heads query for the process, log reads only when behind."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings

from events_app import log, services, signals
from events_app.auth import Principal
from events_app.log import log_heads
from events_app.streaming import subscription
from events_app.streaming.subscription import ExecutionSubscription
from tests.conftest import count_calls, eventually, idle_subscriptions

FULL_ACCESS = Principal(name="api-key")

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("own_channel_layer")]

create_request = database_sync_to_async(services.request_create)


@pytest.fixture
def queries(monkeypatch):
    """Heads queries and log reads made by subscriptions, counted; both still go through."""
    counts: dict[str, int] = {}
    count_calls(monkeypatch, subscription, "alog_heads", counts, "heads")
    count_calls(monkeypatch, log, "aevents_after", counts, "reads")
    return counts


def test_log_heads_are_the_last_sequences_of_executions_with_events(execution_id, other_execution_id):
    for prompt in ("a", "b"):
        services.request_create(execution_id=execution_id, prompt=prompt)
    services.request_create(execution_id=other_execution_id, prompt="c")
    heads = log_heads(execution_ids=[execution_id, other_execution_id, "never-written"])
    assert heads == {execution_id: 2, other_execution_id: 1}


def test_log_heads_read_more_executions_than_one_query_holds(execution_id):
    services.request_create(execution_id=execution_id, prompt="?")
    others = [f"idle-{index}" for index in range(log.HEADS_CHUNK * 2 + 7)]
    assert log_heads(execution_ids=[*others, execution_id]) == {execution_id: 1}


# Heads are re-read after a fifth of the catch-up: 12 s here, so however slowly a busy machine
# runs the fifty catch-ups below, they fall within one read.
@override_settings(HUMANINPUT_CATCHUP_SECONDS=60)
async def test_fifty_idle_subscribers_share_one_heads_query_and_read_no_log(execution_id, queries):
    subscriptions = idle_subscriptions(execution_id, 50)
    for entered in subscriptions:
        await entered.__aenter__()
    try:
        for entered in subscriptions:
            assert await entered.catch_up() == []
    finally:
        for entered in subscriptions:
            await entered.__aexit__(None, None, None)
    assert queries == {"heads": 1, "reads": 0}


# The cross-process watcher would find the commit too: off, so only the catch-up can.
@override_settings(HUMANINPUT_CATCHUP_SECONDS=0.2, HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS=0)
async def test_an_event_whose_doorbell_was_lost_is_found_by_the_next_catch_up(
    execution_id, queries, monkeypatch
):
    monkeypatch.setattr(signals, "publish_event", lambda payload: None)  # every doorbell lost
    followed = ExecutionSubscription(
        execution_id=execution_id, after_sequence=0, principal=FULL_ACCESS, transport="sse"
    )
    async with followed:
        assert await followed.read_log() == []
        request = await create_request(execution_id=execution_id, prompt="silent")
        events = await followed.next_events(max_wait=5)
    assert [(event["sequence"], event["request_id"]) for event in events] == [(1, str(request.id))]


@override_settings(HUMANINPUT_CATCHUP_SECONDS=60)
async def test_heads_are_read_again_for_an_execution_the_last_read_did_not_cover(execution_id, queries):
    async with ExecutionSubscription(
        execution_id=execution_id, after_sequence=0, principal=FULL_ACCESS, transport="ws"
    ) as first:
        assert await first.catch_up() == []
        await create_request(execution_id=f"{execution_id}-new", prompt="?")
        async with ExecutionSubscription(
            execution_id=f"{execution_id}-new", after_sequence=0, principal=FULL_ACCESS, transport="ws"
        ) as newcomer:
            assert [event["sequence"] for event in await newcomer.catch_up()] == [1]
    assert queries["heads"] == 2


# --- what one subscriber holds at a time ------------------------------------------------


@override_settings(HUMANINPUT_CATCHUP_SECONDS=60)
async def test_a_long_log_is_read_in_bounded_pieces_without_waiting_for_a_catch_up(execution_id):
    for index in range(7):
        await create_request(execution_id=execution_id, prompt=f"#{index}")
    async with ExecutionSubscription(
        execution_id=execution_id, after_sequence=0, principal=FULL_ACCESS, transport="sse", max_read=3
    ) as followed:
        pieces = [await followed.read_log()]
        while len(pieces[-1]) == 3:
            pieces.append(await followed.next_events(max_wait=0))
    assert [[event["sequence"] for event in piece] for piece in pieces] == [[1, 2, 3], [4, 5, 6], [7]]


@override_settings(HUMANINPUT_CATCHUP_SECONDS=60)
async def test_doorbells_of_a_subscriber_that_falls_behind_are_bounded_and_nothing_is_lost(
    execution_id, monkeypatch
):
    monkeypatch.setattr(subscription, "MAX_QUEUED_DOORBELLS", 4)
    async with ExecutionSubscription(
        execution_id=execution_id, after_sequence=0, principal=FULL_ACCESS, transport="ws"
    ) as followed:
        assert await followed.read_log() == []
        for index in range(10):  # rung while the subscriber is busy elsewhere
            await create_request(execution_id=execution_id, prompt=f"#{index}")
        await eventually(_async(followed.listener.messages.full), what="the doorbell queue filling up")
        assert followed.listener.messages.qsize() == 4
        received = []
        while len(received) < 10:
            received += await followed.next_events(max_wait=5)
    assert [event["sequence"] for event in received] == list(range(1, 11))


def _async(check):
    async def probe():
        return check()

    return probe
