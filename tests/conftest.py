"""Fixtures shared by the whole suite."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import psycopg
import pytest
from asgiref.sync import sync_to_async
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers, get_channel_layer
from django.conf import settings
from django.db import connection, connections


@pytest.fixture
def api_key() -> str:
    return settings.HUMANINPUT_API_KEY


@pytest.fixture
def execution_id() -> str:
    """A fresh execution id per test, so tests never see each other's events (or groups)."""
    return f"exec-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def other_execution_id() -> str:
    return f"other-{uuid.uuid4().hex[:12]}"


def uses_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


def uses_redis() -> bool:
    return bool(getattr(settings, "REDIS_URL", ""))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A ``services`` test run without PostgreSQL + Redis is a configuration error, not a skip."""
    if item.get_closest_marker("services") and not (uses_postgres() and uses_redis()):
        pytest.fail("needs DATABASE_URL (PostgreSQL) and REDIS_URL; run it with `make test-postgres`")


@pytest.fixture(scope="session", autouse=True)
def no_session_outlives_the_run(django_db_setup, django_db_blocker, pytestconfig):
    """End, and name, PostgreSQL sessions still on the test database when the run is over.

    Dropping the test database fails while any session holds it ("being
    accessed by other users"), and a connection checked out of the pool by a
    thread of this process (asgiref's, channels') or a server process that is
    still exiting may hold one. Runs before pytest-django drops the database;
    what it ends is printed, so a real leak stays visible.
    """
    yield
    if connection.vendor != "postgresql":
        return
    connection.close()
    connection.close_pool()  # this process's idle pooled connections are not leaks: closed first
    database = connection.settings_dict
    with (
        django_db_blocker.unblock(),
        psycopg.connect(
            host=database["HOST"],
            port=database["PORT"],
            user=database["USER"],
            password=database["PASSWORD"] or None,
            dbname="postgres",
            autocommit=True,
        ) as admin,
    ):
        ended = admin.execute(
            "SELECT pid, application_name, state, left(query, 120), pg_terminate_backend(pid)"
            " FROM pg_stat_activity WHERE datname = %s",
            [database["NAME"]],
        ).fetchall()
    terminal = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    with pytestconfig.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        for pid, application, state, query, _ in ended:
            terminal.write_line(
                f"ended a session left on the test database: pid={pid} app={application!r} "
                f"state={state} last query={query!r}"
            )


@pytest.fixture
def app_log(caplog):
    """``caplog`` that also sees ``events_app`` records, INFO and up (that logger does not propagate)."""
    logger = logging.getLogger("events_app")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="events_app")
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture
def own_channel_layer(monkeypatch):
    """A channel layer instance for this test alone.

    ``get_channel_layer()`` returns one process-wide instance, but
    channels-redis keeps per-event-loop state in it (connections, receive
    locks) and every test runs its own loop: what one test leaves behind must
    not reach the next.
    """
    layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
    monkeypatch.setitem(channel_layers.backends, DEFAULT_CHANNEL_LAYER, layer)
    return layer


@pytest.fixture
async def layer_ready(own_channel_layer):
    """Open the channel layer's receive connection on this test's event loop first.

    channels-redis connects lazily, once per event loop; a receive cancelled
    while that first connection is being opened misses the cancellation. A
    server has one long-lived loop, the tests one per test.
    """
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "warm.up"})
    await layer.receive(channel)


@pytest.fixture
async def close_view_connections():
    """Close the DB connection views opened in asgiref's shared thread.

    ``AsyncClient`` runs a view's ``sync_to_async`` code there and, unlike a
    server, never closes it; left open it delays the database teardown.
    """
    yield
    await sync_to_async(connections.close_all)()


def asgi_http_scope(path: str, *, query: str = "", headers: list[tuple[bytes, bytes]] = ()) -> dict:
    """The ASGI scope of a plain GET to ``path``, as a server would build it."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


# --- waiting on other processes -------------------------------------------------------
#
# State held by another process (a daphne, Redis, the database) announces nothing
# to the test, so it can only be read again until it is right. These two helpers
# are the only places the suite re-reads on a timer: ``eventually`` for a state
# that must arrive before a deadline, ``throughout`` for one that must hold for a
# window (an absence can only be observed over time).

POLL_INTERVAL = 0.05


async def eventually(probe, *, accept=bool, deadline: float = 15.0, what: str = "the condition"):
    """Re-read ``probe()`` until ``accept(value)``; the accepted value, or AssertionError at the deadline."""
    end = time.monotonic() + deadline
    while True:
        value = await probe()
        if accept(value):
            return value
        assert time.monotonic() < end, f"{what} not reached within {deadline} s (last read: {value!r})"
        await asyncio.sleep(POLL_INTERVAL)


async def throughout(probe, *, seconds: float, what: str) -> None:
    """Assert ``probe()`` is truthy at every read for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert await probe(), f"{what} stopped holding"
        await asyncio.sleep(POLL_INTERVAL)


# --- subscriptions without a transport -------------------------------------------------


def idle_subscriptions(execution_id: str, count: int, transport: str = "ws") -> list:
    """``count`` subscriptions (not entered) to executions ``<execution_id>-0``, ``-1``, ..., from the start
    of their logs, as the API key: what many idle clients of one process hold."""
    from events_app.auth import Principal
    from events_app.streaming.subscription import ExecutionSubscription

    principal = Principal(name="api-key")
    return [
        ExecutionSubscription(
            execution_id=f"{execution_id}-{index}", after_sequence=0, principal=principal, transport=transport
        )
        for index in range(count)
    ]


def count_calls(monkeypatch, owner, name: str, counts: dict[str, int], key: str) -> None:
    """Replace ``owner.name`` (sync or async) by a wrapper that adds one to ``counts[key]`` per
    call and then calls the original: the work still happens, and is counted."""
    real = getattr(owner, name)
    counts.setdefault(key, 0)
    if asyncio.iscoroutinefunction(real):

        async def counted(*args, **kwargs):
            counts[key] += 1
            return await real(*args, **kwargs)

    else:

        def counted(*args, **kwargs):
            counts[key] += 1
            return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
