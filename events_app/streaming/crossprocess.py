"""Doorbells for events that another process committed, on the embedded default.

Why this exists: the in-memory channel layer lives inside one process. An
event written by another process (``manage.py humaninput_ask`` in a second
terminal, a Django shell, a second daphne on the same SQLite file) is in the
log at once, but its doorbell rings only in the process that wrote it, so
subscribers here would see it at their next catch-up
(``HUMANINPUT_CATCHUP_SECONDS``, 5 s by default).

How: while anyone on this event loop follows an execution, a thread of the
``CrossProcessWatcher`` asks SQLite every
``HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS`` (0.25 s) whether another
connection has committed since its last check: ``PRAGMA data_version`` on a
connection of its own to the database file, a few microseconds that read no
table. The thread wakes the event loop only when that number changes (or a
newly followed execution wants a first look); the loop then reads the log
heads of every execution followed here (one query, as
``subscription.LogHeads`` does) and, for each execution whose head moved
past what it last saw, rings that execution's group on the local layer with
a doorbell that carries only the ``sequence``. The follower finds a gap and
reads it from the log (``log.LogFollower.on_doorbell``); a subscriber
already there ignores it without a query.

What it costs: while nothing is committed, a thread wakes four times a
second and the event loop not at all: no query, no task. This process's own
writes change ``data_version`` too (Django's connections are other
connections to the watcher), so while writes happen there is at most about
one heads query per interval; its doorbell then arrives after the one the
write rang itself, which carried the event, and is ignored.

When it is off (no thread, no connection):

- the channel layer crosses processes (channels_redis): the writer's doorbell
  already reaches every process;
- the database is not an SQLite file. With PostgreSQL but no ``REDIS_URL``,
  events written by other processes arrive by catch-up: PostgreSQL has no
  per-connection change counter, and reading the heads every 0.25 s in every
  process would make idle subscribers cost more than the catch-up does.
  Several processes on PostgreSQL belong on Redis (docs/deployment.md);
- ``HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS`` is 0;
- nobody on the loop follows an execution (it stops with the last one).

The operator inbox (``events_app.inbox``) is not rung: its messages forward
the event itself, so it keeps re-reading its snapshot at its catch-up.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import connections, router

from ..conf import humaninput_settings
from ..events import group_name
from ..log import alog_heads
from ..metrics import CROSS_PROCESS_DOORBELLS
from ..models import HumanInputEvent

logger = logging.getLogger(__name__)

# How long a check waits for SQLite's locks (in the watcher's thread); in WAL
# mode ``data_version`` needs none, in rollback mode a writer can hold them.
PROBE_BUSY_TIMEOUT = 1.0


def log_grew_message(sequence: int) -> dict[str, Any]:
    """A doorbell like ``events.doorbell_message`` without the event: the log now ends at ``sequence``."""
    return {"type": "humaninput.event", "sequence": sequence}


def watched_database() -> str | None:
    """The SQLite file to watch, or None when the watcher is off (see the module docstring)."""
    if humaninput_settings.CROSS_PROCESS_CHECK_SECONDS <= 0:
        return None
    if not isinstance(get_channel_layer(), InMemoryChannelLayer):
        return None
    connection = connections[router.db_for_write(HumanInputEvent)]
    if connection.vendor != "sqlite" or connection.is_in_memory_db():
        return None
    return str(connection.settings_dict["NAME"])


def _sqlite_uri(database: str) -> str:
    # mode=rw: never create an empty database where the real one is missing.
    return database if database.startswith("file:") else Path(database).resolve().as_uri() + "?mode=rw"


class DataVersionProbe:
    """``PRAGMA data_version`` of one SQLite file, on a connection of its own (for one thread).

    SQLite changes that number on a connection whenever *another* connection,
    of this process or any other, commits to the database.
    """

    def __init__(self, database: str) -> None:
        self.database = database
        self._connection: sqlite3.Connection | None = None

    def read(self) -> int:
        """The number now, opening the connection first if needed; ``sqlite3.Error`` if it cannot."""
        if self._connection is None:
            self._connection = sqlite3.connect(
                _sqlite_uri(self.database), uri=True, timeout=PROBE_BUSY_TIMEOUT, isolation_level=None
            )
        try:
            # fetchall() runs the statement to its end, so no read transaction
            # stays open between checks (one would hold back WAL checkpoints).
            return int(self._connection.execute("PRAGMA data_version").fetchall()[0][0])
        except sqlite3.Error:
            self.close()  # reopened next time: the file may have been replaced
            raise

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class CommitSignal(threading.Thread):
    """Reads ``probe`` every ``interval`` seconds; calls ``notify(self)`` on ``loop`` when the
    number changed or ``ask_for_look`` was called since the last check."""

    def __init__(
        self,
        probe: DataVersionProbe,
        *,
        interval: float,
        loop: asyncio.AbstractEventLoop,
        notify: Callable[[CommitSignal], None],
    ) -> None:
        super().__init__(name="humaninput-cross-process", daemon=True)
        self.probe = probe
        self.interval = interval
        self.loop = loop
        self.notify = notify
        self._stopping = threading.Event()
        self._look_asked = threading.Event()

    def ask_for_look(self) -> None:
        self._look_asked.set()

    def stop(self) -> None:
        """Returns at once; the thread closes its connection and ends within microseconds."""
        self._stopping.set()

    def run(self) -> None:
        seen: int | None = None
        failing = False
        try:
            while not self._stopping.wait(self.interval) and not self.loop.is_closed():
                try:
                    version = self.probe.read()
                except sqlite3.Error as error:
                    if not failing:
                        logger.warning(
                            "cross-process check failed; others' events come by catch-up: %r", error
                        )
                    failing = True
                    continue
                if failing:
                    logger.info("cross-process check works again")
                    failing = False
                if version != seen or self._look_asked.is_set():
                    self._look_asked.clear()
                    seen = version
                    self.loop.call_soon_threadsafe(self.notify, self)
        except RuntimeError:
            pass  # the loop is closed: there is nobody left to ring
        finally:
            self.probe.close()


class CrossProcessWatcher:
    """One event loop's watcher over ``followed`` (``LogHeads.followed``: execution -> subscribers).

    ``followed_changed`` starts its ``CommitSignal`` thread with the first
    followed execution and stops it with the last. Each signal runs one look
    on the loop: the heads of every followed execution, and a doorbell for
    each one that grew.
    """

    def __init__(self, followed: Counter[str]) -> None:
        self.followed = followed
        self.signal: CommitSignal | None = None
        self._decided = False  # whether to run was decided for the current followers
        self._seen_heads: dict[str, int] = {}
        self._look: asyncio.Task[None] | None = None
        self._look_again = False
        self._failing = False

    @property
    def running(self) -> bool:
        return self.signal is not None

    def followed_changed(self, execution_id: str) -> None:
        """Called when ``execution_id`` gained or lost a subscriber on this loop.

        Whether to run at all is decided when the first execution is followed,
        so with the watcher off a new subscriber costs nothing more. A newly
        followed execution gets a look at the next check even without a
        commit: its subscriber's first read may have just missed one.
        """
        if not self.followed:
            self.stop()
            return
        if not self._decided:
            self._decided = True
            self._start()
        if self.signal is not None and execution_id in self.followed and execution_id not in self._seen_heads:
            self.signal.ask_for_look()

    def _start(self) -> None:
        database = watched_database()
        if database is None:
            return
        self._seen_heads = {}
        self.signal = CommitSignal(
            DataVersionProbe(database),
            interval=humaninput_settings.CROSS_PROCESS_CHECK_SECONDS,
            loop=asyncio.get_running_loop(),
            notify=self._on_signal,
        )
        self.signal.start()

    def stop(self) -> None:
        """Stop the thread and any look in progress; returns at once."""
        signal, self.signal = self.signal, None
        look, self._look = self._look, None
        self._decided = False
        self._seen_heads = {}
        if signal is not None:
            signal.stop()
        if look is not None:
            look.cancel()

    def _on_signal(self, signal: CommitSignal) -> None:
        """Called on the loop when the thread saw a commit (or was asked for a look)."""
        if signal is not self.signal:
            return  # from a thread stopped since
        if self._look is not None:
            self._look_again = True
            return
        # A context of its own: the look is no part of whichever request ran last.
        self._look = asyncio.get_running_loop().create_task(
            self._look_and_ring(signal), name="humaninput-cross-process-look", context=contextvars.Context()
        )

    async def _look_and_ring(self, signal: CommitSignal) -> None:
        try:
            again = True
            while again:
                self._look_again = False
                followed = list(self.followed)
                try:
                    heads = await alog_heads(execution_ids=followed)
                    await _ring_grown(heads, self._seen_heads)
                except Exception as error:
                    if not self._failing:
                        logger.warning("cross-process look failed; retried at the next check: %r", error)
                    self._failing = True
                    signal.ask_for_look()
                    return
                self._failing = False
                self._seen_heads = {key: heads.get(key, 0) for key in followed}
                again = self._look_again
        finally:
            if self._look is asyncio.current_task():
                self._look = None


async def _ring_grown(heads: dict[str, int], seen_heads: dict[str, int]) -> None:
    """Ring, on this process's layer, each execution whose head is past what was seen."""
    layer = get_channel_layer()
    for execution_id, head in heads.items():
        if head > seen_heads.get(execution_id, 0):
            await layer.group_send(group_name(execution_id), log_grew_message(head))
            CROSS_PROCESS_DOORBELLS.inc()
