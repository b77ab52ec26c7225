"""Make daphne close oversized WebSocket messages with 1009, as the spec says.

Daphne hands its size limits to autobahn, whose default on a violation is to
drop the TCP connection without a close frame (``failByDrop``): the client
sees an abnormal closure (1006), not "message too big" (1009). Channels
cannot send 1009 from a consumer either (autobahn only lets applications use
1000 and 3000-4999). So before daphne builds its WebSocket factory we make
the protocol fail politely, and cap the message and frame size at
``HUMANINPUT_WS_MAX_MESSAGE_BYTES`` whatever daphne's own flags say (a
smaller daphne limit wins). Without daphne installed this does nothing.
"""

from __future__ import annotations

from typing import Any

from .conf import humaninput_settings

_PATCHED = "_humaninput_limits"


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
