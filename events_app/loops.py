"""Which event loop sync code is serving: the one question the sync write path asks before
it hands work to a loop.

Sync code in a server runs in threads that asgiref's ``sync_to_async`` gave
it. Waiting there on the server's loop (``async_to_sync``) hangs forever once
a SIGTERM has stopped that loop, and the interpreter's exit then joins the
thread forever: code in those threads hands work over without waiting, and
gives up when the loop is not running.
"""

from __future__ import annotations

import asyncio
import os

from asgiref.sync import SyncToAsync


def serving_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop the calling code runs for, or None when there is none (or it is closed).

    That is the loop running in this thread, or else the loop that handed
    this thread its work through ``sync_to_async``: asgiref records it in
    ``SyncToAsync.threadlocal.main_event_loop`` (with the recording process's
    ``main_event_loop_pid``, stale after a fork), which ``async_to_sync``
    itself reads to find its way back. The record outlives the call, so a
    closed loop means a finished one, not ours.
    """
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    if getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) != os.getpid():
        return None
    loop: asyncio.AbstractEventLoop | None = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    if loop is None or loop.is_closed():
        return None
    return loop
