"""The cross-process watcher: commits by other connections ring this process's followers.

Most tests point the watcher at a scratch SQLite file of their own and commit
to it with a plain ``sqlite3`` connection, as another process would: the test
decides when "another process committed", and the same tests run with the
embedded default and with PostgreSQL + Redis (heads are read from whichever
database the run uses; the doorbell goes through whichever layer it uses).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections
from django.test import override_settings
from prometheus_client import REGISTRY

from events_app import log, services, signals
from events_app.auth import Principal
from events_app.conf import humaninput_settings
from events_app.events import group_name
from events_app.streaming import crossprocess
from events_app.streaming.crossprocess import DataVersionProbe, log_grew_message, watched_database
from events_app.streaming.subscription import ExecutionSubscription, GroupListener, followed_log_heads
from tests.conftest import count_calls, eventually, idle_subscriptions, uses_redis

FULL_ACCESS = Principal(name="api-key")

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("own_channel_layer")]

create_request = database_sync_to_async(services.request_create)


class OtherProcess:
    """A scratch SQLite file and a connection of its own that commits to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connection = sqlite3.connect(path)
        self.connection.execute("CREATE TABLE writes (n INTEGER)")
        self.connection.commit()

    def commit(self) -> None:
        self.connection.execute("INSERT INTO writes VALUES (1)")
        self.connection.commit()

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def other_process(tmp_path):
    other = OtherProcess(tmp_path / "watched.sqlite3")
    yield other
    other.close()


@pytest.fixture
def watched(other_process, monkeypatch):
    """The watcher on: it watches ``other_process``'s file, whatever the run's database and layer."""
    monkeypatch.setattr(crossprocess, "watched_database", lambda: str(other_process.path))
    return other_process


@pytest.fixture
def counts(monkeypatch):
    """The watcher's data_version checks and heads queries, counted; both still run."""
    counted: dict[str, int] = {}
    count_calls(monkeypatch, DataVersionProbe, "read", counted, "checks")
    count_calls(monkeypatch, crossprocess, "alog_heads", counted, "heads")
    return counted


@pytest.fixture
def doorbells_lost(monkeypatch):
    """Writes ring no doorbell here: as far as this process knows, someone else made them."""
    monkeypatch.setattr(signals, "publish_event", lambda payload: None)


def doorbells_rung() -> float:
    return REGISTRY.get_sample_value("humaninput_cross_process_doorbells_total")


def at_least(n):
    return lambda value: value >= n


# --- the probe ------------------------------------------------------------------------


def test_data_version_changes_when_another_connection_commits(other_process):
    probe = DataVersionProbe(str(other_process.path))
    try:
        first = probe.read()
        assert probe.read() == first
        other_process.commit()
        assert probe.read() != first
    finally:
        probe.close()


def test_probe_never_creates_a_missing_database(tmp_path):
    probe = DataVersionProbe(str(tmp_path / "missing.sqlite3"))
    try:
        with pytest.raises(sqlite3.OperationalError):
            probe.read()
    finally:
        probe.close()
    assert not (tmp_path / "missing.sqlite3").exists()


# --- when it runs -------------------------------------------------------------------------


def test_it_watches_the_sqlite_file_of_the_embedded_default_only():
    db = connections["default"]
    embedded = db.vendor == "sqlite" and not uses_redis()
    assert watched_database() == (str(db.settings_dict["NAME"]) if embedded else None)


def test_it_is_off_with_a_channel_layer_that_crosses_processes(monkeypatch):
    monkeypatch.setattr(crossprocess, "get_channel_layer", lambda: object())
    assert watched_database() is None


@override_settings(HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS=0)
def test_it_is_off_when_the_setting_is_zero():
    assert watched_database() is None


def test_it_checks_four_times_a_second_by_default(settings):
    if hasattr(settings, "HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS"):
        del settings.HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS
    assert humaninput_settings.CROSS_PROCESS_CHECK_SECONDS == 0.25


@pytest.mark.parametrize("value", [-0.25, 61, "soon"])
def test_a_check_interval_out_of_range_is_a_configuration_error(value):
    with override_settings(HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS=value), pytest.raises(ImproperlyConfigured):
        humaninput_settings.CROSS_PROCESS_CHECK_SECONDS  # noqa: B018


async def test_its_thread_runs_from_the_first_follower_to_the_last(watched, execution_id):
    watcher = followed_log_heads().watcher
    assert not watcher.running
    async with ExecutionSubscription(
        execution_id=execution_id, after_sequence=0, principal=FULL_ACCESS, transport="ws"
    ):
        thread = watcher.signal
        assert thread is not None and thread.is_alive()
        async with ExecutionSubscription(
            execution_id=f"{execution_id}-2", after_sequence=0, principal=FULL_ACCESS, transport="sse"
        ):
            assert watcher.signal is thread
        assert watcher.signal is thread
    assert not watcher.running
    await eventually(_async(lambda: not thread.is_alive()), what="the thread ended")
    assert thread.probe._connection is None  # closed on its way out


@override_settings(HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS=0)
async def test_nothing_runs_when_it_is_off(execution_id):
    async with ExecutionSubscription(
        execution_id=execution_id, after_sequence=0, principal=FULL_ACCESS, transport="ws"
    ):
        assert not followed_log_heads().watcher.running


# --- what it does -------------------------------------------------------------------------


@override_settings(HUMANINPUT_CATCHUP_SECONDS=60, HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS=0.05)
async def test_a_commit_elsewhere_reaches_a_follower_long_before_its_catch_up(
    watched, doorbells_lost, execution_id
):
    rung = doorbells_rung()
    followed = ExecutionSubscription(
        execution_id=execution_id, after_sequence=0, principal=FULL_ACCESS, transport="sse"
    )
    async with followed:
        assert await followed.read_log() == []
        request = await create_request(execution_id=execution_id, prompt="from another process")
        watched.commit()
        events = await followed.next_events(max_wait=10)  # the catch-up is 60 s away
    assert [(event["sequence"], event["request_id"]) for event in events] == [(1, str(request.id))]
    assert doorbells_rung() == rung + 1


@override_settings(HUMANINPUT_CATCHUP_SECONDS=60, HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS=0.02)
async def test_idle_followers_cost_no_query_until_something_is_committed(
    watched, doorbells_lost, counts, execution_id
):
    subscriptions = idle_subscriptions(execution_id, 20)
    for entered in subscriptions:
        await entered.__aenter__()
        assert await entered.read_log() == []  # as a transport does; the next catch-up is 60 s away
    try:
        # Newly followed executions are looked at once (a query); the check after next
        # started once all of them were followed, so their first look is done by then.
        await _checks(counts, 2)
        looked = counts["heads"]
        assert looked >= 1
        await _checks(counts, 10)
        assert counts["heads"] == looked  # idle: checks, no query
        await create_request(execution_id=f"{execution_id}-7", prompt="?")
        watched.commit()
        events = await subscriptions[7].next_events(max_wait=10)
        assert [event["sequence"] for event in events] == [1]
        assert counts["heads"] == looked + 1
        await _checks(counts, 10)
        assert counts["heads"] == looked + 1
    finally:
        for entered in subscriptions:
            await entered.__aexit__(None, None, None)


@override_settings(HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS=0.02)
async def test_a_newly_followed_execution_is_rung_at_its_first_look_without_a_commit(
    watched, doorbells_lost, execution_id
):
    # Written before anyone here follows it, and no commit to the watched file after:
    # a subscriber whose first read came just before such a write still gets it.
    await create_request(execution_id=execution_id, prompt="?")
    listener = GroupListener(group_name(execution_id))
    heads = followed_log_heads()
    assert await listener.join()
    heads.follow(execution_id)
    try:
        assert await listener.receive(10) == log_grew_message(1)
    finally:
        heads.unfollow(execution_id)
        await listener.leave()


@override_settings(HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS=0.02)
async def test_a_failing_check_is_logged_once_and_retried(
    tmp_path, monkeypatch, counts, app_log, execution_id
):
    monkeypatch.setattr(crossprocess, "watched_database", lambda: str(tmp_path / "missing.sqlite3"))
    async with ExecutionSubscription(
        execution_id=execution_id, after_sequence=0, principal=FULL_ACCESS, transport="ws"
    ):
        await eventually(_async(lambda: counts["checks"]), accept=at_least(5), what="five checks")
    failures = [record for record in app_log.records if "cross-process check failed" in record.getMessage()]
    assert len(failures) == 1


@override_settings(HUMANINPUT_CATCHUP_SECONDS=60, HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS=0.02)
async def test_a_look_that_fails_is_logged_once_and_retried_at_the_next_check(
    watched, doorbells_lost, monkeypatch, app_log, execution_id
):
    real_heads = crossprocess.alog_heads
    failures = iter([DatabaseError("database is locked")] * 3)

    async def flaky_heads(**kwargs):
        if error := next(failures, None):
            raise error
        return await real_heads(**kwargs)

    monkeypatch.setattr(crossprocess, "alog_heads", flaky_heads)
    followed = ExecutionSubscription(
        execution_id=execution_id, after_sequence=0, principal=FULL_ACCESS, transport="ws"
    )
    async with followed:
        assert await followed.read_log() == []
        await create_request(execution_id=execution_id, prompt="?")
        watched.commit()
        events = await followed.next_events(max_wait=10)
    assert [event["sequence"] for event in events] == [1]
    failed = [record for record in app_log.records if "cross-process look failed" in record.getMessage()]
    assert len(failed) == 1


# --- the doorbell without an event ------------------------------------------------------------


@override_settings(HUMANINPUT_CATCHUP_SECONDS=60, HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS=0)
async def test_a_doorbell_without_an_event_makes_the_follower_read_up_to_its_sequence(
    doorbells_lost, monkeypatch, execution_id
):
    reads = []
    real_read = log.aevents_after

    async def counting_read(**kwargs):
        reads.append(kwargs)
        return await real_read(**kwargs)

    monkeypatch.setattr(log, "aevents_after", counting_read)
    async with ExecutionSubscription(
        execution_id=execution_id, after_sequence=0, principal=FULL_ACCESS, transport="ws"
    ) as followed:
        assert await followed.read_log() == []
        for prompt in ("a", "b"):
            await create_request(execution_id=execution_id, prompt=prompt)
        await get_channel_layer().group_send(group_name(execution_id), log_grew_message(2))
        events = await followed.next_events(max_wait=10)
        assert [event["sequence"] for event in events] == [1, 2]
        reads.clear()
        await get_channel_layer().group_send(group_name(execution_id), log_grew_message(2))
        assert await followed.next_events(max_wait=0.5) == []
    assert reads == []  # a follower already there reads nothing


async def _checks(counts, more: int) -> None:
    """Wait for ``more`` checks of the watcher."""
    wanted = counts["checks"] + more
    await eventually(_async(lambda: counts["checks"]), accept=at_least(wanted), what=f"{more} checks")


def _async(check):
    async def probe():
        return check()

    return probe
