"""Sequence allocation under concurrent writers: 1..N per execution, no gaps, no duplicates.

The writers really run at once: threads start together on a ``Barrier``,
processes on a "go" line written to all of them after each reported ready.
The data must be committed to be seen across connections, hence
``transaction=True``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

from events_app import services
from events_app.models import HumanInputEvent

pytestmark = pytest.mark.django_db(transaction=True)

PROJECT_DIR = Path(__file__).resolve().parent.parent

CHILD_WRITER = """
import sys

import django

django.setup()

from django.db import connection

from events_app import services

execution_id, count = sys.argv[1], int(sys.argv[2])
connection.ensure_connection()
print("ready", flush=True)
sys.stdin.readline()
for number in range(count):
    services.request_create(execution_id=execution_id, prompt=f"child prompt {number}")
connection.close()
"""


def sequences_of(execution_id: str) -> list[int]:
    return list(
        HumanInputEvent.objects.filter(execution_id=execution_id)
        .order_by("sequence")
        .values_list("sequence", flat=True)
    )


def run_writer_threads(jobs: list[tuple[str, int]]) -> list[BaseException]:
    """Run one thread per ``(execution_id, creates)`` job, all released at once; return their errors."""
    barrier = threading.Barrier(len(jobs))
    errors: list[BaseException] = []
    lock = threading.Lock()

    def write(execution_id: str, creates: int) -> None:
        try:
            barrier.wait(timeout=30)
            for number in range(creates):
                services.request_create(execution_id=execution_id, prompt=f"prompt {number}")
        except BaseException as error:
            with lock:
                errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    errors.extend(TimeoutError(f"{t.name} still running") for t in threads if t.is_alive())
    return errors


def test_concurrent_threads_get_sequences_without_gaps_or_duplicates(execution_id):
    errors = run_writer_threads([(execution_id, 15)] * 8)
    assert errors == []
    assert sequences_of(execution_id) == list(range(1, 8 * 15 + 1))


def test_concurrent_threads_on_two_executions_count_each_separately(execution_id, other_execution_id):
    errors = run_writer_threads([(execution_id, 15)] * 8 + [(other_execution_id, 10)] * 4)
    assert errors == []
    assert sequences_of(execution_id) == list(range(1, 8 * 15 + 1))
    assert sequences_of(other_execution_id) == list(range(1, 4 * 10 + 1))


def test_each_request_of_concurrent_writers_gets_exactly_one_event(execution_id):
    errors = run_writer_threads([(execution_id, 10)] * 6)
    assert errors == []
    request_ids = list(
        HumanInputEvent.objects.filter(execution_id=execution_id).values_list("request_id", flat=True)
    )
    assert len(request_ids) == len(set(request_ids)) == 60


def child_database_url() -> str:
    """The URL of the database this test runs on (pytest-django renamed it to the test database)."""
    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    assert db["ENGINE"] == "django.db.backends.postgresql", db["ENGINE"]
    credentials = quote(db["USER"] or "", safe="")
    if db.get("PASSWORD"):
        credentials += ":" + quote(db["PASSWORD"], safe="")
    host = db["HOST"] or "127.0.0.1"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{credentials}@{host}{port}/{quote(db['NAME'], safe='')}"


def start_child_writer(execution_id: str, creates: int) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["DATABASE_URL"] = child_database_url()
    return subprocess.Popen(
        [sys.executable, "-c", CHILD_WRITER, execution_id, str(creates)],
        cwd=PROJECT_DIR,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_processes_get_sequences_without_gaps_or_duplicates(execution_id, other_execution_id):
    jobs = [(execution_id, 25)] * 4 + [(other_execution_id, 10)] * 2
    children = [start_child_writer(*job) for job in jobs]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        results = [(child.wait(timeout=90), child.stderr.read()) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
            for stream in (child.stdin, child.stdout, child.stderr):
                stream.close()
    assert [code for code, _ in results] == [0] * len(jobs), [err for _, err in results]
    assert sequences_of(execution_id) == list(range(1, 4 * 25 + 1))
    assert sequences_of(other_execution_id) == list(range(1, 2 * 10 + 1))
