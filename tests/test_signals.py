"""Publishing: each committed event rings its execution's group once; failures never fail the write.

These run against whatever channel layer the settings configure: the
in-memory layer on the embedded default, Redis when ``REDIS_URL`` is set.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time

import pytest
from asgiref.sync import SyncToAsync, async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, get_channel_layer
from django.db import connection, transaction
from django.test import override_settings
from prometheus_client import REGISTRY

from events_app import loops, services, signals
from events_app.events import group_name
from events_app.models import HumanInputEvent

# Publishing happens on commit, so the writes must really commit.
committed_writes = pytest.mark.django_db(transaction=True)
pytestmark = pytest.mark.usefixtures("own_channel_layer")

CHANNELS_GROUP_NAME = re.compile(r"^[A-Za-z0-9._-]{1,99}$")


class Boom(Exception):
    pass


@pytest.fixture
async def subscriber(execution_id, own_channel_layer):
    """A channel of the real layer, joined to ``execution_id``'s group for the test."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(group_name(execution_id), channel)
    yield layer, channel
    await layer.group_discard(group_name(execution_id), channel)


create_request = database_sync_to_async(services.request_create)


@committed_writes
async def test_committed_event_rings_its_group_with_sequence_and_payload(execution_id, subscriber):
    layer, channel = subscriber
    request = await create_request(execution_id=execution_id, prompt="Approve?")
    message = await asyncio.wait_for(layer.receive(channel), timeout=5)
    stored = await HumanInputEvent.objects.aget(request=request)
    published_at = message.pop("published_at")
    assert message == {"type": "humaninput.event", "sequence": 1, "event": stored.payload}
    assert time.time() - 5 < published_at <= time.time()


@committed_writes
async def test_each_event_rings_once_in_sequence_order(execution_id, subscriber):
    layer, channel = subscriber
    request = await create_request(execution_id=execution_id, prompt="Approve?")
    await database_sync_to_async(services.request_respond)(request_id=request.id, response="yes")
    first = await asyncio.wait_for(layer.receive(channel), timeout=5)
    second = await asyncio.wait_for(layer.receive(channel), timeout=5)
    assert [first["sequence"], second["sequence"]] == [1, 2]
    assert second["event"]["type"] == "human_input_completed"


def create_then_roll_back(execution_id: str) -> None:
    with transaction.atomic():
        services.request_create(execution_id=execution_id, prompt="never happened")
        raise Boom


@committed_writes
async def test_rolled_back_write_announces_nothing(execution_id, subscriber):
    layer, channel = subscriber
    with pytest.raises(Boom):
        await database_sync_to_async(create_then_roll_back)(execution_id)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), timeout=0.3)
    assert not await HumanInputEvent.objects.filter(execution_id=execution_id).aexists()


@committed_writes
async def test_first_announcement_after_a_rollback_is_the_committed_event(execution_id, subscriber):
    layer, channel = subscriber
    with pytest.raises(Boom):
        await database_sync_to_async(create_then_roll_back)(execution_id)
    committed = await create_request(execution_id=execution_id, prompt="real")
    message = await asyncio.wait_for(layer.receive(channel), timeout=5)
    assert message["event"]["request_id"] == str(committed.id)
    assert message["sequence"] == 1


def publish_counts() -> tuple[float, float]:
    """(published, failed) as this process's /metrics reports them."""
    return (
        REGISTRY.get_sample_value("humaninput_events_published_total") or 0.0,
        REGISTRY.get_sample_value("humaninput_publish_failures_total") or 0.0,
    )


@committed_writes
def test_successful_publish_is_counted(execution_id):
    published, failed = publish_counts()
    services.request_create(execution_id=execution_id, prompt="?")
    assert publish_counts() == (published + 1, failed)


# --- a failing channel layer -------------------------------------------------------


class RaisingLayer:
    async def group_send(self, group, message):
        raise ConnectionError("redis is down")


class HangingLayer:
    async def group_send(self, group, message):
        await asyncio.Event().wait()


@pytest.fixture(params=[RaisingLayer, HangingLayer], ids=["raises", "hangs"])
def broken_layer(request, monkeypatch):
    monkeypatch.setattr(signals, "get_channel_layer", request.param)
    with override_settings(HUMANINPUT_PUBLISH_TIMEOUT_SECONDS=0.05):
        yield


@committed_writes
def test_write_succeeds_when_publishing_fails(execution_id, broken_layer):
    request = services.request_create(execution_id=execution_id, prompt="?")
    assert HumanInputEvent.objects.filter(request=request, sequence=1).exists()


@committed_writes
def test_failed_publish_is_counted(execution_id, broken_layer):
    published, failed = publish_counts()
    services.request_create(execution_id=execution_id, prompt="?")
    assert publish_counts() == (published, failed + 1)


@committed_writes
def test_failed_publish_is_logged_as_an_error(execution_id, broken_layer, app_log):
    services.request_create(execution_id=execution_id, prompt="?")
    errors = [r for r in app_log.records if r.name == "events_app.signals" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].execution_id == execution_id
    assert errors[0].sequence == 1
    assert errors[0].exc_info is None  # one line per failure, not a traceback per event


@committed_writes
def test_answer_succeeds_when_publishing_fails(execution_id, broken_layer):
    request = services.request_create(execution_id=execution_id, prompt="?")
    answered = services.request_respond(request_id=request.id, response="yes")
    assert answered.status == "completed"
    assert HumanInputEvent.objects.filter(request=request).count() == 2


# --- writes in a server's request thread ------------------------------------------
#
# A view or consumer writes in a thread that ``sync_to_async`` started from the
# server's event loop (here: the test's loop). Its publish runs on that loop
# while the thread returns; a stopped loop gets no publish and no wait.


class GatedLayer:
    """A layer whose ``group_send`` starts, then waits until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def group_send(self, group, message):
        self.entered.set()
        await self.gate.wait()


@committed_writes
async def test_write_in_a_server_thread_returns_before_its_publish_is_sent(execution_id, monkeypatch):
    layer = GatedLayer()
    monkeypatch.setattr(signals, "get_channel_layer", lambda: layer)
    published, failed = publish_counts()
    # The gate opens only after the write returns: a write that waited for its send
    # would return only at the publish timeout, with the publish counted as failed.
    request = await asyncio.wait_for(create_request(execution_id=execution_id, prompt="?"), timeout=5)
    assert await HumanInputEvent.objects.filter(request=request, sequence=1).aexists()
    await asyncio.wait_for(layer.entered.wait(), timeout=5)
    assert publish_counts() == (published, failed)  # still being sent
    layer.gate.set()
    await signals.wait_for_publishes()
    assert publish_counts() == (published + 1, failed)


@committed_writes
async def test_failed_publish_from_a_server_thread_is_counted_and_logged(execution_id, broken_layer, app_log):
    published, failed = publish_counts()
    await create_request(execution_id=execution_id, prompt="?")
    await signals.wait_for_publishes()
    assert publish_counts() == (published, failed + 1)
    errors = [r for r in app_log.records if r.name == "events_app.signals" and r.levelno == logging.ERROR]
    assert [(r.execution_id, r.sequence, r.exc_info) for r in errors] == [(execution_id, 1, None)]


@committed_writes
def test_publish_cancelled_by_its_loop_shutting_down_is_dropped_with_a_warning(
    execution_id, monkeypatch, app_log
):
    layer = GatedLayer()  # never opened
    monkeypatch.setattr(signals, "get_channel_layer", lambda: layer)

    async def write_then_end_the_loop() -> None:
        await create_request(execution_id=execution_id, prompt="?")
        await asyncio.wait_for(layer.entered.wait(), timeout=5)

    published, failed = publish_counts()
    # A loop factory keeps the runner from replacing the thread's current loop. Closing
    # the runner cancels what still runs on its loop: the send.
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        runner.run(write_then_end_the_loop())
    assert publish_counts() == (published, failed + 1)
    [dropped] = [r for r in app_log.records if r.name == "events_app.signals"]
    assert (dropped.levelno, dropped.execution_id, dropped.sequence) == (logging.WARNING, execution_id, 1)


@committed_writes
def test_write_in_a_thread_of_a_stopped_loop_drops_its_publish_without_waiting(execution_id, app_log):
    """A server shutting down: the loop that handed the thread its request has stopped."""
    loop = asyncio.new_event_loop()
    loop_stopped = threading.Event()
    written = threading.Event()

    def write_after_the_loop_stopped() -> None:
        try:
            loop.call_soon_threadsafe(loop.stop)
            assert loop_stopped.wait(timeout=5)
            services.request_create(execution_id=execution_id, prompt="?")
        finally:
            connection.close()
            written.set()

    published, failed = publish_counts()
    request = loop.create_task(sync_to_async(write_after_the_loop_stopped, thread_sensitive=False)())
    with pytest.raises(RuntimeError, match="stopped before Future completed"):
        loop.run_until_complete(request)
    loop_stopped.set()
    assert written.wait(timeout=5), "the write waited on the stopped loop"
    loop.run_until_complete(request)  # the thread has returned: let the task finish
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()
    assert HumanInputEvent.objects.filter(execution_id=execution_id, sequence=1).exists()
    assert publish_counts() == (published, failed + 1)
    [dropped] = [r for r in app_log.records if r.name == "events_app.signals"]
    assert (dropped.levelno, dropped.execution_id, dropped.sequence) == (logging.WARNING, execution_id, 1)


@committed_writes
def test_thread_whose_loop_has_closed_publishes_in_place(execution_id):
    """asgiref's record of the loop outlives the call: a closed loop is a finished one, not a server's."""

    async def run_in_this_thread_from_a_loop() -> None:
        await sync_to_async(lambda: None)()  # thread-sensitive: runs here, records the loop

    async_to_sync(run_in_this_thread_from_a_loop)()
    assert SyncToAsync.threadlocal.main_event_loop.is_closed()
    assert loops.serving_loop() is None
    published, failed = publish_counts()
    services.request_create(execution_id=execution_id, prompt="?")
    assert publish_counts() == (published + 1, failed)


# --- group names --------------------------------------------------------------------

EXECUTION_IDS = [
    "a",
    "exec-1",
    "exec.1",
    "exec_1",
    "run:1",
    "run.1",
    "run-1",
    ":",
    ".",
    "-",
    "_",
    "x" * 79,
    "x" * 80,
    "x" * 81,
    "x" * 99,
    "x" * 100,
    "x" * 127,
    "x" * 128,
    "y" * 128,
    "x" * 127 + "y",
    ":" * 128,
    "crew:researcher:2026-11-24T18:55:45.123456",
    "humaninput.x",
    "humaninput-h.x",
    "A" * 64,
    "a" * 64,
]


@pytest.mark.parametrize("execution_id", EXECUTION_IDS)
def test_group_name_is_legal_for_channels(execution_id):
    name = group_name(execution_id)
    assert CHANNELS_GROUP_NAME.match(name), name
    assert BaseChannelLayer().require_valid_group_name(name)  # the check every channels layer inherits


def test_distinct_execution_ids_get_distinct_group_names():
    names = {group_name(execution_id) for execution_id in EXECUTION_IDS}
    assert len(names) == len(EXECUTION_IDS)
