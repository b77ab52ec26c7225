"""Retention: ``retention.prune_executions`` and ``manage.py humaninput_prune``.

Executions are made old by moving their timestamps back (what a month of
waiting would do), then pruned against the real clock.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import F
from django.utils import timezone

from events_app import retention, services
from events_app.conf import humaninput_settings
from events_app.events import build_payload
from events_app.log import events_after_cursor
from events_app.models import (
    EventType,
    ExecutionSequence,
    HumanInputEvent,
    HumanInputRequest,
    RequestStatus,
)
from harness.server import wait_until

from .conftest import uses_postgres

pytestmark = pytest.mark.django_db

logger = logging.getLogger(__name__)

MONTH = timedelta(days=30)


def finish_execution(execution_id: str, *, requests: int = 2) -> None:
    """``requests`` questions, each answered: two events per request."""
    for number in range(requests):
        request = services.request_create(execution_id=execution_id, prompt=f"question {number}")
        services.request_respond(request_id=request.id, response=f"answer {number}")


def backdate(execution_id: str, *, by: timedelta) -> None:
    """Move every timestamp of ``execution_id`` ``by`` into the past."""
    HumanInputRequest.objects.filter(execution_id=execution_id).update(
        created_at=F("created_at") - by, responded_at=F("responded_at") - by
    )
    HumanInputEvent.objects.filter(execution_id=execution_id).update(created_at=F("created_at") - by)


def old_finished_execution(execution_id: str, *, requests: int = 2) -> None:
    finish_execution(execution_id, requests=requests)
    backdate(execution_id, by=MONTH + timedelta(days=1))


def rows_of(execution_id: str) -> tuple[int, int]:
    """(requests, events) stored for ``execution_id``."""
    return (
        HumanInputRequest.objects.filter(execution_id=execution_id).count(),
        HumanInputEvent.objects.filter(execution_id=execution_id).count(),
    )


def sequences_of(execution_id: str) -> list[int]:
    events = HumanInputEvent.objects.filter(execution_id=execution_id).order_by("sequence")
    return list(events.values_list("sequence", flat=True))


def prune(**kwargs) -> retention.PruneResult:
    return retention.prune_executions(older_than=MONTH, **kwargs)


# --- what is pruned and what is kept -------------------------------------------------


def test_an_old_finished_execution_loses_all_its_requests_and_events(execution_id):
    old_finished_execution(execution_id, requests=3)
    result = prune()
    assert rows_of(execution_id) == (0, 0)
    assert (result.executions, result.requests, result.events) == (1, 3, 6)
    assert result.dry_run is False


def test_a_pruned_execution_keeps_its_sequence_counter(execution_id):
    old_finished_execution(execution_id, requests=2)
    prune()
    assert ExecutionSequence.objects.get(pk=execution_id).last_sequence == 4


def test_an_old_execution_with_a_pending_request_is_kept(execution_id):
    services.request_create(execution_id=execution_id, prompt="still waiting")
    backdate(execution_id, by=MONTH * 3)
    assert prune().executions == 0
    assert rows_of(execution_id) == (1, 1)


def test_a_recently_finished_execution_is_kept(execution_id):
    finish_execution(execution_id)
    backdate(execution_id, by=MONTH - timedelta(hours=1))
    assert prune().executions == 0
    assert rows_of(execution_id) == (2, 4)


def test_an_execution_asked_long_ago_but_answered_recently_is_kept(execution_id):
    request = services.request_create(execution_id=execution_id, prompt="slow one")
    backdate(execution_id, by=MONTH * 2)
    services.request_respond(request_id=request.id, response="finally")
    assert prune().executions == 0
    assert rows_of(execution_id) == (1, 2)


def test_an_old_execution_with_one_recent_event_is_kept(execution_id):
    old_finished_execution(execution_id, requests=1)
    newest = HumanInputEvent.objects.filter(execution_id=execution_id).order_by("-sequence").first()
    HumanInputEvent.objects.filter(pk=newest.pk).update(created_at=timezone.now())
    assert prune().executions == 0
    assert rows_of(execution_id) == (1, 2)


def test_an_execution_with_one_old_answer_and_one_pending_request_is_kept_whole(execution_id):
    finish_execution(execution_id, requests=1)
    services.request_create(execution_id=execution_id, prompt="the second question")
    backdate(execution_id, by=MONTH * 2)
    assert prune().executions == 0
    assert rows_of(execution_id) == (2, 3)
    assert sequences_of(execution_id) == [1, 2, 3]


def test_cancelled_and_expired_requests_count_as_finished(execution_id):
    cancelled = services.request_create(execution_id=execution_id, prompt="never mind")
    services.request_cancel(request_id=cancelled.id)
    expired = services.request_create(execution_id=execution_id, prompt="too late")
    services.request_expire(request_id=expired.id)
    backdate(execution_id, by=MONTH * 2)
    assert prune().executions == 1
    assert rows_of(execution_id) == (0, 0)


def test_only_the_old_finished_execution_goes_among_others(execution_id, other_execution_id):
    old_finished_execution(execution_id)
    finish_execution(other_execution_id)
    live = f"live-{uuid.uuid4().hex[:12]}"
    services.request_create(execution_id=live, prompt="open")
    backdate(live, by=MONTH * 2)
    result = prune()
    assert result.executions == 1
    assert rows_of(execution_id) == (0, 0)
    assert rows_of(other_execution_id) == (2, 4)
    assert rows_of(live) == (1, 1)


# --- batches -----------------------------------------------------------------------


def batch_records(app_log) -> list:
    return [record for record in app_log.records if record.name == "events_app.retention"]


def test_more_executions_than_a_batch_holds_are_pruned_over_several_small_batches(app_log):
    executions = [f"batch-{uuid.uuid4().hex[:8]}-{number:02}" for number in range(25)]
    for execution_id in executions:
        old_finished_execution(execution_id, requests=1)  # 3 rows each
    result = prune(batch_size=10)
    assert (result.executions, result.requests, result.events) == (25, 25, 50)
    assert all(rows_of(execution_id) == (0, 0) for execution_id in executions)
    records = batch_records(app_log)
    assert len(records) == result.batches >= 8  # 75 rows, at most 10 each
    assert all(record.requests + record.events <= 10 for record in records)
    assert sum(record.executions for record in records) == 25


def test_an_execution_larger_than_the_batch_size_is_deleted_whole_in_one_batch(execution_id, app_log):
    old_finished_execution(execution_id, requests=4)  # 12 rows
    result = prune(batch_size=5)
    assert (result.executions, result.requests, result.events, result.batches) == (1, 4, 8, 1)
    assert [record.events for record in batch_records(app_log)] == [8]


def test_each_batch_is_logged_once_with_its_counts(execution_id, app_log):
    old_finished_execution(execution_id)
    prune()
    (record,) = batch_records(app_log)
    assert record.getMessage().startswith("pruned batch 1: 1 execution(s), 2 request(s), 4 event(s) in ")
    assert record.dry_run is False


def record_rests(monkeypatch) -> list[float]:
    rests: list[float] = []
    monkeypatch.setattr(retention, "_rest", rests.append)
    return rests


def three_batches_of_old_executions() -> None:
    for number in range(3):
        old_finished_execution(f"rest-{uuid.uuid4().hex[:8]}-{number}", requests=1)  # 3 rows each


def test_between_batches_the_prune_rests_as_long_as_a_batch_took_on_sqlite_only(monkeypatch):
    three_batches_of_old_executions()
    rests = record_rests(monkeypatch)
    assert prune(batch_size=3).batches == 3
    assert len(rests) == 2
    if connection.vendor == "sqlite":  # one write lock for the whole database
        assert all(rest > 0 for rest in rests)
    else:  # row locks: nothing to make room for
        assert rests == [0.0, 0.0]


def test_an_explicit_pause_is_rested_between_batches(monkeypatch):
    three_batches_of_old_executions()
    rests = record_rests(monkeypatch)
    prune(batch_size=3, pause=0.25)
    assert rests == [0.25, 0.25]


def test_a_dry_run_never_rests(monkeypatch):
    three_batches_of_old_executions()
    rests = record_rests(monkeypatch)
    assert prune(batch_size=3, dry_run=True, pause=1.0).batches == 3
    assert rests == []


# --- dry run -----------------------------------------------------------------------


def test_a_dry_run_deletes_nothing_and_counts_what_a_real_run_deletes(execution_id, other_execution_id):
    old_finished_execution(execution_id, requests=2)
    old_finished_execution(other_execution_id, requests=1)
    dry = prune(dry_run=True)
    assert rows_of(execution_id) == (2, 4)
    assert rows_of(other_execution_id) == (1, 2)
    real = prune()
    assert dry.dry_run is True
    assert (dry.executions, dry.requests, dry.events) == (real.executions, real.requests, real.events)
    assert (real.executions, real.requests, real.events) == (2, 3, 6)


# --- the sequence and readers after a prune ---------------------------------------------


def test_a_new_event_after_a_prune_continues_the_sequence(execution_id):
    old_finished_execution(execution_id, requests=2)  # sequences 1..4
    prune()
    request = services.request_create(execution_id=execution_id, prompt="back again")
    assert request.required_event.sequence == 5
    assert sequences_of(execution_id) == [5]


def test_a_pruned_cursor_reads_the_whole_retained_log(execution_id):
    old_finished_execution(execution_id, requests=1)
    pruned_cursor = HumanInputEvent.objects.filter(execution_id=execution_id).latest("sequence").event_id
    prune()
    finish_execution(execution_id, requests=1)  # sequences 3 and 4
    after, events = events_after_cursor(execution_id=execution_id, cursor=pruned_cursor)
    assert after == 0
    assert [event["sequence"] for event in events] == [3, 4]


def test_a_pruned_cursor_of_an_execution_with_nothing_retained_reads_nothing(execution_id):
    old_finished_execution(execution_id, requests=1)
    pruned_cursor = HumanInputEvent.objects.filter(execution_id=execution_id).latest("sequence").event_id
    prune()
    assert events_after_cursor(execution_id=execution_id, cursor=pruned_cursor) == (0, [])


# --- racing writers ------------------------------------------------------------------


def test_a_request_created_after_the_scan_keeps_its_execution(execution_id, monkeypatch):
    """The batch decides again in its transaction: the scan's verdict may be stale."""
    old_finished_execution(execution_id, requests=1)
    decide = retention._prunable
    verdicts: list[set[str]] = []

    def a_request_arrives_after_the_scan(**kwargs):
        found = decide(**kwargs)
        if not verdicts:
            services.request_create(execution_id=execution_id, prompt="one more thing")
        verdicts.append(set(found))
        return found

    monkeypatch.setattr(retention, "_prunable", a_request_arrives_after_the_scan)
    result = prune()
    assert verdicts == [{execution_id}, set()]
    assert result.executions == 0
    assert rows_of(execution_id) == (2, 3)


def backends_waiting_for_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_a_writer_of_the_execution_being_pruned_waits_for_the_batch_then_continues(execution_id, monkeypatch):
    old_finished_execution(execution_id, requests=2)  # sequences 1..4
    decide = retention._prunable
    writer_errors: list[BaseException] = []
    written: list[HumanInputRequest] = []

    def write() -> None:
        try:
            written.append(services.request_create(execution_id=execution_id, prompt="arrives mid-prune"))
        except BaseException as error:
            writer_errors.append(error)
        finally:
            connection.close()

    writer = threading.Thread(target=write)

    def a_writer_arrives_inside_the_batch(**kwargs):
        found = decide(**kwargs)
        if connection.in_atomic_block and writer.ident is None:  # the batch's own decision
            writer.start()
            if uses_postgres():
                # Its sequence UPSERT must queue on the row this batch locked (a state only
                # PostgreSQL holds, so it is re-read until it shows, within the deadline).
                wait_until(
                    backends_waiting_for_a_lock, timeout=15, what="the writer to wait for the prune's lock"
                )
        return found

    monkeypatch.setattr(retention, "_prunable", a_writer_arrives_inside_the_batch)
    result = prune()
    writer.join(timeout=30)
    assert not writer.is_alive()
    assert writer_errors == []
    assert result.executions == 1
    assert (result.requests, result.events) == (2, 4)
    (request,) = written
    assert request.required_event.sequence == 5
    assert list(HumanInputRequest.objects.filter(execution_id=execution_id)) == [request]
    assert sequences_of(execution_id) == [5]


def bulk_old_finished_executions(prefix: str, count: int, *, age: timedelta) -> int:
    """``count`` answered one-question executions written in bulk (3 rows each); the rows written."""
    moment = timezone.now() - age
    requests, events, counters = [], [], []
    for number in range(count):
        execution_id = f"{prefix}-{number:05}"
        request = HumanInputRequest(
            execution_id=execution_id,
            prompt=f"question {number}",
            status=RequestStatus.COMPLETED,
            response="yes",
            created_at=moment,
            responded_at=moment,
        )
        requests.append(request)
        for sequence, event_type in enumerate((EventType.REQUIRED, EventType.COMPLETED), start=1):
            event_id = uuid.uuid4()
            payload = build_payload(
                event_type=event_type, request=request, event_id=event_id, sequence=sequence, timestamp=moment
            )
            events.append(
                HumanInputEvent(
                    event_id=event_id,
                    execution_id=execution_id,
                    sequence=sequence,
                    type=event_type,
                    payload=payload,
                    request=request,
                    created_at=moment,
                )
            )
        counters.append(ExecutionSequence(execution_id=execution_id, last_sequence=2))
    HumanInputRequest.objects.bulk_create(requests, batch_size=500)
    HumanInputEvent.objects.bulk_create(events, batch_size=500)
    ExecutionSequence.objects.bulk_create(counters, batch_size=500)
    return len(requests) + len(events)


@pytest.mark.django_db(transaction=True)
def test_writers_of_other_executions_keep_writing_while_a_large_prune_runs(other_execution_id):
    """A writer never waits long: each batch is its own short transaction.

    The writer starts with the prune and writes until the prune has finished;
    every write must succeed (on SQLite: none fails with "database is
    locked"). The slowest write is logged, not asserted (machines differ):
    ``--log-cli-level=INFO`` shows it.
    """
    executions = 2000
    rows = bulk_old_finished_executions(f"bulk-{uuid.uuid4().hex[:8]}", executions, age=MONTH * 2)
    start = threading.Barrier(2)
    prune_done = threading.Event()
    outcome: dict[str, object] = {}
    latencies: list[float] = []
    writer_errors: list[BaseException] = []

    def run_prune() -> None:
        try:
            start.wait(timeout=30)
            outcome["result"] = prune(batch_size=300)
        except BaseException as error:
            outcome["error"] = error
        finally:
            prune_done.set()
            connection.close()

    def write_until_the_prune_is_done() -> None:
        try:
            # Not timed: opens the connections (database, channel layer).
            services.request_create(execution_id=other_execution_id, prompt="warming up")
            start.wait(timeout=30)
            while True:
                began = time.perf_counter()
                services.request_create(execution_id=other_execution_id, prompt="meanwhile")
                latencies.append(time.perf_counter() - began)
                if prune_done.is_set():
                    return
        except BaseException as error:
            writer_errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run_prune), threading.Thread(target=write_until_the_prune_is_done)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not any(thread.is_alive() for thread in threads)
    assert "error" not in outcome, outcome
    assert writer_errors == []
    result = outcome["result"]
    assert (result.executions, result.rows) == (executions, rows)
    assert result.batches >= rows // 300
    assert sequences_of(other_execution_id) == list(range(1, len(latencies) + 2))
    logger.info(
        "pruned %d rows in %.2f s (%d rows/s, %d batches); "
        "%d concurrent writes, median %.1f ms, slowest %.1f ms",
        result.rows,
        result.seconds,
        result.rows / result.seconds,
        result.batches,
        len(latencies),
        statistics.median(latencies) * 1000,
        max(latencies) * 1000,
    )


# --- arguments, the command and the setting ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("3600s", timedelta(seconds=3600)),
        (" 7d ", timedelta(days=7)),
    ],
)
def test_an_age_is_a_number_and_one_unit(text, expected):
    assert retention.parse_age(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "30",
        "d",
        "",
        "0d",
        "-1d",
        "1.5d",
        "30 d",
        "30days",
        "30D",
        "1d12h",
        "\uff13\uff10d",
        "36501d",
        "9" * 12 + "d",
    ],
)
def test_anything_else_is_refused_by_the_command(text):
    with pytest.raises(CommandError, match="--older-than"):
        call_command("humaninput_prune", f"--older-than={text}")


@pytest.mark.parametrize("size", ["0", "-5", str(retention.MAX_BATCH_SIZE + 1)])
def test_a_batch_size_out_of_range_is_refused(size):
    with pytest.raises(CommandError, match="--batch-size"):
        call_command("humaninput_prune", "--older-than=30d", f"--batch-size={size}")


@pytest.mark.parametrize("pause", ["-1", "61", "soon", "nan"])
def test_a_pause_out_of_range_is_refused(pause):
    with pytest.raises(CommandError, match="--pause"):
        call_command("humaninput_prune", "--older-than=30d", f"--pause={pause}")


def test_a_batch_size_that_is_not_a_number_is_refused():
    with pytest.raises(CommandError, match="--batch-size"):
        call_command("humaninput_prune", "--older-than=30d", "--batch-size=many")


@pytest.mark.parametrize(
    "arguments",
    [
        {"older_than": timedelta(0)},
        {"older_than": MONTH, "batch_size": 0},
        {"older_than": MONTH, "pause": -1.0},
    ],
)
def test_prune_executions_refuses_a_bad_age_batch_size_or_pause(arguments):
    with pytest.raises(ValueError):
        retention.prune_executions(**arguments)


def run_command(*arguments: str) -> str:
    out = StringIO()
    call_command("humaninput_prune", *arguments, stdout=out)
    return out.getvalue()


def test_the_command_prunes_and_reports_counts_and_time(execution_id):
    old_finished_execution(execution_id, requests=2)
    output = run_command("--older-than=30d")
    assert output.startswith("Deleted 1 execution(s): 2 request(s), 4 event(s), finished before ")
    assert output.rstrip().endswith(" s.")
    assert rows_of(execution_id) == (0, 0)


def test_the_command_with_a_shorter_age_prunes_more_recent_executions(execution_id):
    finish_execution(execution_id, requests=1)
    backdate(execution_id, by=timedelta(hours=2))
    assert run_command("--older-than=90m").startswith("Deleted 1 execution(s)")
    assert rows_of(execution_id) == (0, 0)


def test_the_command_dry_run_says_what_would_go_and_keeps_it(execution_id):
    old_finished_execution(execution_id, requests=1)
    output = run_command("--older-than=30d", "--dry-run")
    assert output.startswith("Would delete 1 execution(s): 1 request(s), 2 event(s)")
    assert rows_of(execution_id) == (1, 2)


def test_the_command_without_an_age_uses_the_retention_setting(execution_id, other_execution_id, settings):
    settings.HUMANINPUT_RETENTION_DAYS = 10
    finish_execution(execution_id, requests=1)
    backdate(execution_id, by=timedelta(days=11))
    finish_execution(other_execution_id, requests=1)
    backdate(other_execution_id, by=timedelta(days=9))
    assert run_command().startswith("Deleted 1 execution(s)")
    assert rows_of(execution_id) == (0, 0)
    assert rows_of(other_execution_id) == (1, 2)


def test_the_command_without_an_age_or_a_setting_is_an_error(settings, execution_id):
    settings.HUMANINPUT_RETENTION_DAYS = None
    old_finished_execution(execution_id, requests=1)
    with pytest.raises(CommandError, match="HUMANINPUT_RETENTION_DAYS"):
        call_command("humaninput_prune")
    assert rows_of(execution_id) == (1, 2)


def test_retention_is_off_unless_configured(settings):
    if hasattr(settings, "HUMANINPUT_RETENTION_DAYS"):
        del settings.HUMANINPUT_RETENTION_DAYS
    assert humaninput_settings.RETENTION_DAYS is None


@pytest.mark.parametrize(("raw", "expected"), [("", None), (None, None), ("45", 45), (7, 7)])
def test_the_retention_setting_reads_days_or_off(settings, raw, expected):
    settings.HUMANINPUT_RETENTION_DAYS = raw
    assert humaninput_settings.RETENTION_DAYS == expected


@pytest.mark.parametrize("raw", ["0", "-3", "soon", "1.5", "36501"])
def test_a_bad_retention_setting_is_a_configuration_error(settings, raw):
    settings.HUMANINPUT_RETENTION_DAYS = raw
    with pytest.raises(ImproperlyConfigured, match="HUMANINPUT_RETENTION_DAYS"):
        humaninput_settings.RETENTION_DAYS  # noqa: B018
