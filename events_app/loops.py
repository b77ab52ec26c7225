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
import weakref
from collections.abc import Callable
from typing import TypeVar

from asgiref.sync import SyncToAsync

T = TypeVar("T")


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


def per_loop(factory: Callable[[], T]) -> Callable[[], T]:
    """A function that returns the running loop's own ``factory()``, made on first use.

    Process-wide state of the async side (shared reads, watchers) belongs to
    one event loop: a server has one; a test suite starts one per test, and
    state made on a closed loop must not leak into the next.
    """
    made: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def for_running_loop() -> T:
        loop = asyncio.get_running_loop()
        if loop not in made:
            made[loop] = factory()
        return made[loop]

    return for_running_loop
