"""The plain log format: the line starts as before and ends with the record's context as key=value."""

from __future__ import annotations

import logging
import logging.config
import re
import sys

import pytest
from django.conf import settings

from events_app import services
from events_app.logformat import PlainFormatter, format_value

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# What tests/e2e/conftest.py's unexpected_tracebacks splits records on.
LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def record(message: str = "request completed: human_input_completed", **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("events_app.services", logging.INFO, __file__, 1, message, None, None)
    made.__dict__.update(extra)
    return made


def test_context_fields_follow_the_message_in_a_fixed_order():
    line = PlainFormatter(FORMAT).format(
        record(
            responded_by="user:ann",
            sequence=2,
            status="completed",
            event_id="ev-1",
            request_id="req-1",
            execution_id="run-42",
        )
    )
    assert LINE_START.match(line)
    assert line.endswith(
        " INFO events_app.services request completed: human_input_completed "
        "execution_id=run-42 request_id=req-1 event_id=ev-1 sequence=2 status=completed responded_by=user:ann"
    )


def test_a_record_without_context_is_the_plain_line_it_always_was():
    plain = record(message="expired 3 overdue request(s)")
    assert PlainFormatter(FORMAT).format(plain) == logging.Formatter(FORMAT).format(plain)


def test_absent_and_empty_fields_are_left_out():
    line = PlainFormatter("%(message)s").format(record(message="m", execution_id="run-1", responded_by=""))
    assert line == "m execution_id=run-1"


def test_token_and_publish_fields_are_context_too():
    issued = PlainFormatter("%(message)s").format(
        record(message="token issued", execution_id="e", token_id="t1", scope="read", by="api-key")
    )
    assert issued == "token issued execution_id=e token_id=t1 scope=read by=api-key"
    failed = PlainFormatter("%(message)s").format(record(message="publish failed", error="TimeoutError"))
    assert failed == "publish failed error=TimeoutError"


def test_unknown_extra_fields_are_not_written():
    assert PlainFormatter("%(message)s").format(record(message="m", cutoff="2026-01-01")) == "m"


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("user:ann", "user:ann"),
        (7, "7"),
        ("user:Ann Lee", '"user:Ann Lee"'),
        ("a=b", '"a=b"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("line\nforged 2026-01-01 00:00:00,000 ERROR", '"line\\nforged 2026-01-01 00:00:00,000 ERROR"'),
        ("tab\tand\u2028separator", '"tab\\tand\\u2028separator"'),
    ],
)
def test_values_are_one_token_each(value, written):
    assert format_value(value) == written


def test_a_value_with_a_newline_keeps_the_record_on_one_line():
    line = PlainFormatter(FORMAT).format(record(responded_by="user:x\n2026-01-01 00:00:00,000 ERROR forged"))
    assert len(line.splitlines()) == 1


def test_the_context_is_on_the_first_line_and_the_traceback_after_it():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failing = record(message="reading the log failed", execution_id="run-7")
        failing.exc_info = sys.exc_info()
    first, *rest = PlainFormatter(FORMAT).format(failing).splitlines()
    assert first.endswith("reading the log failed execution_id=run-7")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "RuntimeError: boom"


def test_the_settings_plain_formatter_is_this_one_with_the_same_line_start():
    config = settings.LOGGING["formatters"]["plain"]
    formatter = logging.config.DictConfigurator(settings.LOGGING).configure_formatter(dict(config))
    assert isinstance(formatter, PlainFormatter)
    assert formatter._fmt == FORMAT


@pytest.mark.django_db(transaction=True)
def test_a_state_change_logged_by_the_services_carries_execution_request_and_who(execution_id, app_log):
    request = services.request_create(execution_id=execution_id, prompt="?")
    services.request_respond(request_id=request.id, response="yes", responded_by="user:ann")
    formatter = PlainFormatter(FORMAT)
    created, answered = (formatter.format(r) for r in app_log.records if r.name == "events_app.services")
    assert f" execution_id={execution_id} request_id={request.id} " in created
    assert "sequence=1 status=pending" in created
    assert "responded_by" not in created
    assert f" execution_id={execution_id} request_id={request.id} " in answered
    assert answered.endswith("sequence=2 status=completed responded_by=user:ann")
