"""Following an execution's events for any transport, and channel-layer groups for the inbox.

A ``GroupListener`` holds one channel of its own in one group and turns the
layer's messages into a queue; leaving gives the membership back whatever
happens (cancelled mid-join, client gone mid-stream, layer down).

An ``ExecutionSubscription`` joins the execution's group on a channel of its
own, reads the log once, then waits for doorbells; between doorbells it
catches up every ``HUMANINPUT_CATCHUP_SECONDS``. If the channel layer is
unreachable it keeps working on catch-up alone and retries the group at each
catch-up, so a Redis outage slows delivery but loses nothing.

A catch-up first asks ``LogHeads`` whether the log has grown past the
subscriber's position: one query answers that for every execution followed
in the process, so N idle subscribers cost one small query per period, not
N log reads; only a subscriber that is behind reads its log.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from types import TracebackType
from typing import Any, TypeVar

from channels.layers import get_channel_layer
from django.db import Error as DatabaseError

from ..auth import Principal, arevoked_token_ids
from ..conf import humaninput_settings
from ..events import group_name
from ..exceptions import ServiceUnavailable, TokenRevoked
from ..log import LogFollower, Payload, alog_heads
from ..loops import per_loop
from ..metrics import CATCHUP_READS, EVENTS_DELIVERED, PUBLISH_DELIVER_SECONDS, SUBSCRIBERS
from .crossprocess import CrossProcessWatcher

logger = logging.getLogger(__name__)

T = TypeVar("T")

# What one subscriber holds at a time: a log read of at most this many events
# (the rest is read as soon as these are sent), and this many doorbells queued.
MAX_READ_EVENTS = 500
MAX_QUEUED_DOORBELLS = 100


async def or_unavailable(work: Awaitable[T]) -> T:
    """``work``'s result; a database error becomes ``ServiceUnavailable`` (503 / close 4503).

    How every stream reports a database that does not answer while it opens
    or reads its first page (the policy table in ``opening``).
    """
    try:
        return await work
    except DatabaseError as error:
        raise ServiceUnavailable() from error


class GroupListener:
    """Membership of ``group`` on a channel of its own, with a queue of what arrives.

    One long-lived receive per channel, like a consumer's: cancelling a
    channels_redis ``receive()`` mid-wait can lose what it was handed, so
    waiting callers wait on the queue, never on the layer.
    """

    def __init__(self, group: str) -> None:
        self.group = group
        self.layer: Any = get_channel_layer()
        self.channel: str | None = None
        # Bounded: a subscriber that cannot keep up (its client reads slowly) must
        # not hold every doorbell; dropping the oldest is safe, because the
        # follower reads any gap from the log.
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=MAX_QUEUED_DOORBELLS)
        self._receiver: asyncio.Task[None] | None = None
        self._memberships: list[str] = []
        self._left = False

    @property
    def joined(self) -> bool:
        return self.channel is not None

    async def join(self) -> bool:
        """Join the group (again, after a layer failure); False if the layer is unavailable or left."""
        if self.layer is None or self.channel is not None or self._left:
            return self.channel is not None
        try:
            # The layer's default prefix on purpose: channels_redis serves every
            # process-local channel of one prefix from one Redis list, read by
            # whichever receiver holds its lock (consumers use the default too).
            channel = await self.layer.new_channel()
            # Recorded before group_add: a client leaving mid-join (the view is
            # cancelled right here) must still give the membership back.
            self._memberships.append(channel)
            await self.layer.group_add(self.group, channel)
        except Exception as error:
            # One line, no traceback: in an outage every subscriber says this.
            logger.warning("channel layer unavailable; %s by catch-up reads only: %r", self.group, error)
            return False
        except BaseException:
            await self.leave()
            raise
        self.channel = channel
        self._receiver = asyncio.create_task(self._receive_forever(channel))
        return True

    async def _receive_forever(self, channel: str) -> None:
        try:
            while True:
                message = await self.layer.receive(channel)
                if self.messages.full():
                    self.messages.get_nowait()
                self.messages.put_nowait(message)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.warning("lost the channel layer; %s by catch-up reads: %r", self.group, error)
            if self.channel == channel:
                self.channel = None  # the next join() uses a new channel

    async def leave(self) -> None:
        """Give back every membership first, then stop the receiver (bounded wait).

        Shielded: this runs while the view is being cancelled (client gone).
        The receiver is waited for only briefly: a cancelled channels_redis
        receive can sit in its blocking pop for seconds, and nothing of ours
        depends on it any more.
        """
        memberships, self._memberships = self._memberships, []
        self.channel, self._left = None, True
        receiver, self._receiver = self._receiver, None
        try:
            for channel in memberships:
                discard = asyncio.ensure_future(self.layer.group_discard(self.group, channel))
                # Shielded, it outlives a cancelled leave(); its failure is then nobody's to
                # await, and asyncio would print it as "Task exception was never retrieved".
                discard.add_done_callback(_note_failed_discard)
                try:
                    await asyncio.shield(discard)
                except Exception as error:
                    logger.warning("could not leave group %s: %r", self.group, error)
        finally:
            # Even when a second cancellation (daphne repeats them) lands above:
            # a receiver left running keeps its channel subscribed in Redis.
            if receiver is not None:
                receiver.cancel()
                await asyncio.wait({receiver}, timeout=1.0)
                if not receiver.done():
                    # On 3.11 a receive can swallow the cancel (redis-py's wait_for,
                    # CPython gh-86296) and poll on for ever: cancel it again.
                    receiver.cancel()
                    await asyncio.wait({receiver}, timeout=1.0)

    async def receive(self, wait: float) -> dict[str, Any] | None:
        """The next message, or None after ``wait`` seconds.

        ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` can
        swallow a cancellation that arrives as the message does (CPython
        gh-86296), and the subscriber's task would outlive its client.
        """
        try:
            async with asyncio.timeout(wait):
                return await self.messages.get()
        except TimeoutError:
            return None


def _note_failed_discard(discard: asyncio.Future[None]) -> None:
    """Called when a group_discard ends: its error is retrieved (and logged if nobody awaited it)."""
    if not discard.cancelled() and (error := discard.exception()) is not None:
        logger.debug("group_discard failed: %r", error)


class BatchedLookup:
    """Something about every key (execution, token) followed on one event loop, read for all at once.

    The value is re-read when a caller finds it older than ``max_age`` (a
    fifth of the catch-up interval) or not covering its key, by one caller
    while the others wait for that read; so what each subscriber checks at
    its catch-up is at most ``max_age`` old, for one query per ``max_age``
    for the whole process.
    """

    def __init__(self) -> None:
        self.followed: Counter[str] = Counter()
        self.value: Any = None
        self._read_for: frozenset[str] = frozenset()  # the keys the last read covered
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    def follow(self, key: str) -> None:
        self.followed[key] += 1

    def unfollow(self, key: str) -> None:
        self.followed[key] -= 1
        if self.followed[key] <= 0:
            del self.followed[key]

    async def read(self, keys: list[str]) -> Any:
        """Called to read the value for ``keys`` (every key followed)."""
        raise NotImplementedError

    async def fresh(self, key: str) -> Any:
        """The value, read again first if it is stale or does not cover ``key``."""
        loop = asyncio.get_running_loop()
        max_age = humaninput_settings.CATCHUP_SECONDS / 5
        async with self._lock:
            if loop.time() - self._read_at >= max_age or key not in self._read_for:
                started, followed = loop.time(), list(self.followed)
                self.value = await self.read(followed)
                self._read_for, self._read_at = frozenset(followed), started
        return self.value


class LogHeads(BatchedLookup):
    """The last sequence of every followed execution: a missed doorbell is found
    within about 1.2 catch-up intervals.

    On the embedded default its ``watcher`` rings the followed executions when
    another process commits (see ``crossprocess``); it runs while any is followed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.watcher = CrossProcessWatcher(self.followed)

    def follow(self, key: str) -> None:
        super().follow(key)
        self.watcher.followed_changed(key)

    def unfollow(self, key: str) -> None:
        super().unfollow(key)
        self.watcher.followed_changed(key)

    async def read(self, keys: list[str]) -> dict[str, int]:
        return await alog_heads(execution_ids=keys)

    async def is_behind(self, execution_id: str, position: int) -> bool:
        """Whether the log of ``execution_id`` has events past ``position``."""
        return (await self.fresh(execution_id)).get(execution_id, 0) > position


class Revocations(BatchedLookup):
    """Which tokens of the open connections are revoked: each subscriber learns of its
    token's revocation at its next catch-up, within about 1.2 catch-up intervals."""

    async def read(self, keys: list[str]) -> set[str]:
        return await arevoked_token_ids(keys)

    async def is_revoked(self, token_id: str) -> bool:
        return token_id in await self.fresh(token_id)


followed_log_heads = per_loop(LogHeads)
"""This event loop's ``LogHeads`` (the log heads of the executions its subscribers follow)."""

followed_revocations = per_loop(Revocations)
"""This event loop's ``Revocations`` (of the tokens its subscribers hold)."""


class ExecutionSubscription:
    """Use as ``async with``; leaving it always gives the group membership back.

    ``transport`` ("ws", "sse", "poll") labels this subscriber's metrics:
    the connected-subscribers gauge, events delivered by doorbell or by log
    read, catch-up reads, and publish-to-deliver latency.
    """

    def __init__(
        self,
        *,
        execution_id: str,
        after_sequence: int,
        transport: str,
        principal: Principal,
        cursor: uuid.UUID | None = None,
        max_read: int = MAX_READ_EVENTS,
    ) -> None:
        self.execution_id = execution_id
        self.after_sequence = after_sequence
        self.cursor = cursor  # the event_id the client sent, if any (``after_sequence`` is 0 if unknown)
        self.principal = principal
        self.token_id = principal.token_id
        self.follower = LogFollower(
            execution_id=execution_id, after_sequence=after_sequence, max_read=max_read
        )
        self.listener = GroupListener(group_name(execution_id))
        self._loop = asyncio.get_running_loop()
        self._next_catch_up = 0.0
        self._more_in_log = False  # the last read stopped at max_read
        self._subscribers = SUBSCRIBERS.labels(transport)
        self._by_doorbell = EVENTS_DELIVERED.labels(transport, "doorbell")
        self._by_log = EVENTS_DELIVERED.labels(transport, "log")
        self._latency = PUBLISH_DELIVER_SECONDS.labels(transport)
        self._heads = followed_log_heads()
        self._revocations = followed_revocations()

    @property
    def group(self) -> str:
        return self.listener.group

    async def __aenter__(self) -> ExecutionSubscription:
        self._subscribers.inc()
        self._heads.follow(self.execution_id)
        if self.token_id:
            self._revocations.follow(self.token_id)
        try:
            await self.listener.join()
        except BaseException:
            self._unfollow()  # join() already gave back what it took
            raise
        return self

    def _unfollow(self) -> None:
        self._subscribers.dec()
        self._heads.unfollow(self.execution_id)
        if self.token_id:
            self._revocations.unfollow(self.token_id)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.listener.leave()
        finally:
            self._unfollow()

    async def read_log(self) -> list[Payload]:
        """The log past the cursor (at most ``max_read`` events), now; resets the catch-up timer.

        Raises ``ServiceUnavailable`` if the database does not answer.
        """
        self._next_catch_up = self._loop.time() + humaninput_settings.CATCHUP_SECONDS
        events = self._note_size(await or_unavailable(self.follower.catch_up()))
        self._by_log.inc(len(events))
        return events

    def _note_size(self, events: list[Payload]) -> list[Payload]:
        # A full read may have left more behind: the next call reads on at once.
        self._more_in_log = len(events) >= self.follower.max_read
        return events

    async def next_events(self, max_wait: float) -> list[Payload]:
        """New events, waiting at most ``max_wait`` seconds; ``[]`` if none came.

        A database that stops answering once the subscription is open is
        logged and retried at each catch-up: the connection stays, nothing
        is lost (the cursor has not moved). Raises only ``TokenRevoked``.
        """
        deadline = self._loop.time() + max_wait
        if self._more_in_log and (events := await self._unless_database_down(self.read_log())):
            return events
        while True:
            now = self._loop.time()
            if now >= self._next_catch_up:
                await self.listener.join()  # no-op while joined; rejoins after a layer failure
                events = await self._unless_database_down(self.catch_up())
                if events:
                    return events
                now = self._loop.time()
            if now >= deadline:
                return []
            message = await self.listener.receive(min(deadline, self._next_catch_up) - now)
            if message is not None:
                events = await self._unless_database_down(self._on_doorbell(message))
                if events:
                    return events

    async def _unless_database_down(self, read: Awaitable[list[Payload]]) -> list[Payload]:
        """What ``read`` returns, or ``[]`` (logged, retried at the next catch-up) if the database failed."""
        try:
            return await read
        except (ServiceUnavailable, DatabaseError) as error:
            self._more_in_log = False
            self._next_catch_up = self._loop.time() + humaninput_settings.CATCHUP_SECONDS
            logger.warning("database unavailable; %s retries at its next catch-up: %r", self.group, error)
            return []

    async def catch_up(self) -> list[Payload]:
        """The periodic re-read: the log past the cursor if its head says there is any.

        Raises ``TokenRevoked`` once the subscriber's token is on the revocation list.
        """
        if self.token_id and await self._revocations.is_revoked(self.token_id):
            raise TokenRevoked()
        behind = await self._heads.is_behind(self.execution_id, self.follower.position)
        CATCHUP_READS.labels("yes" if behind else "no").inc()
        if not behind:
            self._next_catch_up = self._loop.time() + humaninput_settings.CATCHUP_SECONDS
            return []
        return await self.read_log()

    async def _on_doorbell(self, message: dict[str, Any]) -> list[Payload]:
        carried = message.get("event")
        events = self._note_size(
            await self.follower.on_doorbell(sequence=int(message.get("sequence", 0)), payload=carried)
        )
        if events and events[0] is carried:
            self._by_doorbell.inc()
            published_at = message.get("published_at")
            if isinstance(published_at, float):
                self._latency.observe(max(0.0, time.time() - published_at))
        else:
            self._by_log.inc(len(events))  # a gap, read from the log
        return events
