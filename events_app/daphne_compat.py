"""Two fixes to daphne's defaults: 1009 for oversized messages, no tokens in access logs.

Daphne hands its size limits to autobahn, whose default on a violation is to
drop the TCP connection without a close frame (``failByDrop``): the client
sees an abnormal closure (1006), not "message too big" (1009). Channels
cannot send 1009 from a consumer either (autobahn only lets applications use
1000 and 3000-4999). So before daphne builds its WebSocket factory we make
the protocol fail politely, and cap the message and frame size at
``HUMANINPUT_WS_MAX_MESSAGE_BYTES`` whatever daphne's own flags say (a
smaller daphne limit wins).

Daphne's access log prints each request's path with its query string, and
browsers can only pass a token as ``?token=``; ``mask_access_log_tokens``
rewrites the path of every access-log entry before it is written.

Both are applied from ``humaninput_project.asgi``; without daphne installed
they do nothing.
"""

from __future__ import annotations

import re
from typing import Any

from .conf import humaninput_settings

_PATCHED = "_humaninput_limits"
_TOKEN_IN_QUERY = re.compile(r"([?&](?:token|access_token)=)[^&#\s]*", re.IGNORECASE)


def mask_tokens(path: str) -> str:
    """``path`` with the value of every ``token=`` query parameter replaced."""
    return _TOKEN_IN_QUERY.sub(r"\1[redacted]", path)


def enforce_websocket_limits() -> None:
    """Patch daphne's ``WebSocketFactory.setProtocolOptions``; safe to call twice."""
    try:
        from daphne.ws_protocol import WebSocketFactory
    except ImportError:  # another ASGI server: it enforces its own limits
        return
    if getattr(WebSocketFactory, _PATCHED, False):
        return
    original = WebSocketFactory.setProtocolOptions

    def set_protocol_options(self: Any, *args: Any, **options: Any) -> None:
        limit = humaninput_settings.WS_MAX_MESSAGE_BYTES
        for name in ("maxMessagePayloadSize", "maxFramePayloadSize"):
            given = options.get(name) or 0
            options[name] = min(given, limit) if given else limit
        options["failByDrop"] = False
        original(self, *args, **options)

    WebSocketFactory.setProtocolOptions = set_protocol_options
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
