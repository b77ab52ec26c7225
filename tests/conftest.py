"""Fixtures shared by the whole suite."""

from __future__ import annotations

import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers, get_channel_layer
from django.conf import settings
from django.db import connections


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
