"""Fixes to daphne's defaults: 1009 for oversized messages, close codes that arrive, no tokens in logs.

Daphne hands its size limits to autobahn, whose default on a violation is to
drop the TCP connection without a close frame (``failByDrop``): the client
sees an abnormal closure (1006), not "message too big" (1009). Channels
cannot send 1009 from a consumer either (autobahn only lets applications use
1000 and 3000-4999). So before daphne builds its WebSocket factory we make
the protocol fail politely, and cap the message and frame size at
``HUMANINPUT_WS_MAX_MESSAGE_BYTES`` whatever daphne's own flags say (a
smaller daphne limit wins). Autobahn also refuses to *send* a message over
that cap, which would silence a subscriber at the first event larger than
it (a 40 KB prompt with a 30 KB context): the cap is made to apply to what
clients send only.

Autobahn (since 21.x) raises ``Disconnected`` on a send once the closing
handshake has begun, where daphne expects the send to be dropped: a reply to
a client that has just closed (or sent an oversized frame) killed the
consumer with "Exception inside application", before its ``disconnect``
could give back its subscription. Such sends are dropped again.

When a client does not answer the server's close frame within a second,
autobahn resets the connection, and a reset makes the client's kernel
discard what the client has not read yet: a client slower than that (a busy
one, a far one) got a reset instead of the 101 and the close code (4401 for
a bad token) already sent to it. With nothing of ours left unsent, the
connection is now closed in order instead (FIN), so what was sent arrives.

Daphne's access log prints each request's path with its query string, and
browsers can only pass a token as ``?token=``; ``mask_access_log_tokens``
rewrites the path of every access-log entry before it is written.

On SIGTERM daphne cancels every open request (``kill_all_applications``).
A sync view cancelled this way keeps its thread, and the connection that
thread took from Django's PostgreSQL pool is never handed back (Django
returns it at ``request_finished``, which no longer runs), so the other
writers' threads wait out the pool's timeout (10 s) before the process can
exit. ``close_database_pools_on_shutdown`` closes the pools first: a thread
waiting for a connection fails at once, a connection in use is closed when
its thread is done with it, and a commit in progress still completes.

All of them are applied by ``events_app.server.install`` (from the app's
``ready()``), after its version check; without daphne installed they do nothing.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from django.db import connections

from ..conf import humaninput_settings
from .backpressure import socket_transport, unsent_bytes

_PATCHED = "_humaninput_limits"
_TOKEN_IN_QUERY = re.compile(r"([?&](?:token|access_token)=)[^&#\s]*", re.IGNORECASE)


def mask_tokens(path: str) -> str:
    """``path`` with the value of every ``token=`` query parameter replaced."""
    return _TOKEN_IN_QUERY.sub(r"\1[redacted]", path)


def enforce_websocket_limits() -> None:
    """Patch daphne's ``WebSocketFactory`` and ``WebSocketProtocol`` as the module docstring says;
    safe to call twice."""
    try:
        from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
    except ImportError:  # another ASGI server: it enforces its own limits
        return
    if getattr(WebSocketFactory, _PATCHED, False):
        return
    original = WebSocketFactory.setProtocolOptions
    original_send = WebSocketProtocol.sendMessage

    def set_protocol_options(self: Any, *args: Any, **options: Any) -> None:
        limit = humaninput_settings.WS_MAX_MESSAGE_BYTES
        for name in ("maxMessagePayloadSize", "maxFramePayloadSize"):
            given = options.get(name) or 0
            options[name] = min(given, limit) if given else limit
        options["failByDrop"] = False
        original(self, *args, **options)

    def send_message(self: Any, payload: bytes, *args: Any, **kwargs: Any) -> None:
        # The reactor runs one call at a time: no received frame is checked meanwhile.
        limit, self.maxMessagePayloadSize = self.maxMessagePayloadSize, 0
        try:
            original_send(self, payload, *args, **kwargs)
        finally:
            self.maxMessagePayloadSize = limit

    original_server_send = WebSocketProtocol.serverSend

    def server_send(self: Any, content: Any, binary: bool = False) -> None:
        if self.state in (self.STATE_CLOSING, self.STATE_CLOSED):
            return  # the client is going or gone; its consumer hears of it in websocket.disconnect
        original_server_send(self, content, binary)

    original_close_timeout = WebSocketProtocol.onCloseHandshakeTimeout

    def close_handshake_timeout(self: Any) -> None:
        transport = socket_transport(self.transport)
        if transport is None or unsent_bytes(transport) or self.state == self.STATE_CLOSED:
            original_close_timeout(self)  # a reset: what is still ours to send is dropped
            return
        self.closeHandshakeTimeoutCall = None
        self.wasClean = False
        self.wasNotCleanReason = "WebSocket closing handshake timeout"
        self.wasCloseHandshakeTimeout = True
        self.dropConnection(abort=False)  # a FIN after what the kernel still holds

    WebSocketFactory.setProtocolOptions = set_protocol_options
    WebSocketProtocol.serverSend = server_send
    WebSocketProtocol.onCloseHandshakeTimeout = close_handshake_timeout
    WebSocketProtocol.sendMessage = send_message
    setattr(WebSocketFactory, _PATCHED, True)


def mask_access_log_tokens() -> None:
    """Patch daphne's ``AccessLogGenerator`` to mask tokens; safe to call twice."""
    try:
        from daphne.access import AccessLogGenerator
    except ImportError:
        return
    if getattr(AccessLogGenerator, _PATCHED, False):
        return
    original = AccessLogGenerator.__call__

    def log_entry(self: Any, protocol: Any, action: Any, details: dict[str, Any]) -> None:
        if isinstance(details.get("path"), str):
            details = {**details, "path": mask_tokens(details["path"])}
        original(self, protocol, action, details)

    AccessLogGenerator.__call__ = log_entry
    setattr(AccessLogGenerator, _PATCHED, True)


# How long closing a pool waits for its worker threads at shutdown.
POOL_CLOSE_TIMEOUT = 1.0


def close_database_pools() -> None:
    """Close every PostgreSQL connection pool this process opened (Django's ``OPTIONS["pool"]``)."""
    for alias in connections:
        # The pools are the backend class's, keyed by alias; ``.pool`` would create a missing one.
        pools = getattr(type(connections[alias]), "_connection_pools", {})
        pool = pools.get(alias)
        if pool is not None and not pool.closed:
            pool.close(timeout=POOL_CLOSE_TIMEOUT)


def close_database_pools_on_shutdown() -> None:
    """Patch daphne's ``Server.kill_all_applications`` to close the pools first; safe to call twice."""
    try:
        from daphne.server import Server
    except ImportError:
        return
    if getattr(Server.kill_all_applications, _PATCHED, False):
        return
    original = Server.kill_all_applications

    def kill_all_applications(self: Any) -> Any:
        try:
            close_database_pools()
        except Exception as error:  # never in the way of the shutdown itself
            logging.getLogger(__name__).warning("closing the database pools failed: %r", error)
        return original(self)

    setattr(kill_all_applications, _PATCHED, True)
    Server.kill_all_applications = kill_all_applications
