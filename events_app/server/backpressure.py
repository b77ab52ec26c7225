"""A bound on what the server keeps for a client that does not read.

Daphne's ASGI ``send`` hands each message to Twisted and returns at once, and
Twisted never refuses a write: what a client does not read waits in the
connection's user-space buffer, without limit. One SSE reader or WebSocket
client that stops reading (a frozen tab, a stalled proxy, a hostile client)
would grow the process by every event written after it stopped.

``bound_client_buffers`` wraps that ``send``. After an ``http.response.body``
or ``websocket.send`` message, while the connection holds more than
``HUMANINPUT_MAX_CLIENT_BUFFER_BYTES`` unsent, the sender waits for the
client to take it: a stream goes no faster than its reader, and a burst
(replaying a long log to a client that just connected) is paced rather than
punished. A client still over the limit after
``HUMANINPUT_SLOW_CLIENT_TIMEOUT_SECONDS`` is dropped (TCP reset); its view
or consumer then ends as on any disconnect, giving back its group
membership, and the client resumes from its cursor when it reconnects. So
one connection holds at most the limit plus one message, and a stalled one
holds it for at most the timeout.

The check reads the Twisted transport's buffer (``FileDescriptor``'s
``dataBuffer``, ``offset`` and ``_tempDataLen``: stable for over a decade,
though not public API); a transport without them (another reactor, HTTP/2)
is left unbounded rather than guessed at. What the kernel's socket buffers
hold is not counted: it is not the process's memory.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..conf import humaninput_settings
from ..metrics import SLOW_CLIENTS_DROPPED

logger = logging.getLogger(__name__)

_PATCHED = "_humaninput_bounded"
_SENDS = frozenset({"http.response.body", "websocket.send"})
# While waiting for a slow client, re-check its buffer after 5 ms, then less
# and less often: a stalled connection costs a few wake-ups a second.
_FIRST_PAUSE = 0.005
_LONGEST_PAUSE = 0.25
# How long a sender whose client was just dropped waits to be cancelled.
_CANCELLATION_GRACE = 1.0


def socket_transport(transport: Any) -> Any:
    """The Twisted ``FileDescriptor`` under ``transport`` (looking through TLS), or None."""
    for _ in range(4):
        if isinstance(getattr(transport, "_tempDataLen", None), int):
            return transport
        transport = getattr(transport, "transport", None)
    return None


def unsent_bytes(transport: Any) -> int:
    """Bytes written to a ``socket_transport`` and not yet handed to the kernel."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def _is_open(server: Any, protocol: Any, transport: Any) -> bool:
    connection = server.connections.get(protocol)
    aborting = getattr(transport, "_aborting", False)  # set by abortConnection, before the loss
    return connection is not None and "disconnected" not in connection and not aborting


def _drop(protocol: Any, unsent: int, timeout: float) -> None:
    """Abort the connection of ``protocol`` (a TCP reset), and say so."""
    if hasattr(protocol, "dropConnection"):  # autobahn: let its state machine know
        protocol.dropConnection(abort=True)
        transport = "ws"
    else:
        protocol.transport.abortConnection()
        transport = "http"
    SLOW_CLIENTS_DROPPED.labels(transport).inc()
    logger.warning(
        "dropped a client that stopped reading: %d bytes unsent after %g s (%s %s)",
        unsent,
        timeout,
        transport,
        getattr(protocol, "client_addr", None),
    )


async def wait_for_client(server: Any, protocol: Any) -> None:
    """Return once ``protocol``'s connection holds at most the limit unsent, or is gone.

    Drops the connection if it is still over the limit after the timeout.

    A cancellation landing here (the client went away, so Django cancels
    the response; a consumer's disconnect cancels its sender) is deferred to
    the caller's next await: the send returns, as a send to a closed
    connection does, and the cancellation is asked for again. Cancelled
    here, a streaming view's generator would be left to the garbage
    collector, since Django closes only its own wrappers of it, and with it
    the view's ``async with`` cleanup (the group membership); deferred, it
    lands inside the view, before the view does more work for nobody.
    """
    transport = socket_transport(getattr(protocol, "transport", None))
    limit = humaninput_settings.MAX_CLIENT_BUFFER_BYTES
    if transport is None or unsent_bytes(transport) <= limit:
        return
    loop = asyncio.get_running_loop()
    timeout = humaninput_settings.SLOW_CLIENT_TIMEOUT_SECONDS
    deadline = loop.time() + timeout
    pause = _FIRST_PAUSE
    try:
        while _is_open(server, protocol, transport) and (unsent := unsent_bytes(transport)) > limit:
            remaining = deadline - loop.time()
            if remaining <= 0:
                _drop(protocol, unsent, timeout)
                # The disconnect is on its way to the view or consumer behind
                # this send: wait for its cancellation here rather than let
                # it read more of the log for a client that has gone.
                await asyncio.sleep(_CANCELLATION_GRACE)
                return
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, _LONGEST_PAUSE)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None:
            current.cancel()


def bound_client_buffers() -> None:
    """Patch daphne's ``Server.handle_reply`` (every connection's ``send``); safe to call twice."""
    try:
        from daphne.server import Server
    except ImportError:  # another ASGI server: its own flow control applies
        return
    if getattr(Server, _PATCHED, False):
        return
    original = Server.handle_reply

    async def handle_reply(self: Any, protocol: Any, message: dict[str, Any]) -> None:
        await original(self, protocol, message)
        if message.get("type") in _SENDS:
            await wait_for_client(self, protocol)

    Server.handle_reply = handle_reply
    setattr(Server, _PATCHED, True)
