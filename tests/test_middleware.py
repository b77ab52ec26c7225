"""The WebSocket auth middleware: the session stack only for connections without a token."""

from __future__ import annotations

import pytest

from events_app.server.websocket_auth import SessionAuthUnlessToken, has_token


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"token=abc", True),
        (b"last_event_id=x&token=abc", True),
        (b"token=", False),
        (b"", False),
        (b"xtoken=abc", False),
        (b"token_x=abc", False),
        (b"token=%C3%A9", True),
    ],
)
def test_has_token(query, expected):
    assert has_token({"query_string": query}) is expected


class RecordingApp:
    def __init__(self) -> None:
        self.scopes: list[dict] = []

    async def __call__(self, scope, receive, send) -> None:
        self.scopes.append(scope)


def websocket_scope(query: bytes) -> dict:
    return {"type": "websocket", "path": "/ws/human-input/x", "query_string": query, "headers": []}


async def test_a_token_connection_skips_cookies_session_and_user():
    inner = RecordingApp()
    await SessionAuthUnlessToken(inner)(websocket_scope(b"token=abc"), None, None)
    assert not {"cookies", "session", "user"} & set(inner.scopes[0])


@pytest.mark.django_db
async def test_a_connection_without_token_gets_the_session_stack():
    inner = RecordingApp()
    await SessionAuthUnlessToken(inner)(websocket_scope(b""), None, None)
    assert {"cookies", "session", "user"} <= set(inner.scopes[0])
