"""ASGI middleware for the WebSocket router.

``SessionAuthUnlessToken`` is channels' ``AuthMiddlewareStack`` (cookies,
session, user) for connections that bring no ``?token=``, and nothing for
those that do: a token decides on its own (``auth.authenticate`` ignores the
session when a token is present), so agents and programs, which connect with
tokens, don't pay for three scope copies, a session store and a lazy user
per connection (about 4 KiB each in the benchmarks).
"""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack

from ..params import Query


def has_token(scope: dict[str, Any]) -> bool:
    """Whether the handshake brings a ``?token=`` (given twice, the consumer closes 4400)."""
    return Query.of_scope(scope).present("token")


class SessionAuthUnlessToken:
    """``AuthMiddlewareStack(inner)``, skipped for connections that carry a token."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.with_session = AuthMiddlewareStack(inner)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if has_token(scope):
            return await self.inner(scope, receive, send)
        return await self.with_session(scope, receive, send)
