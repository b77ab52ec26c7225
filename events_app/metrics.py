"""Prometheus metrics of one server process (served at ``/metrics`` by ``api.operations``).

Counters and gauges live in the process that changes them (prometheus_client's
default registry), so every daphne process is scraped on its own port; the
pending-request count is read from the database at scrape time and is the
same on every process. Names follow Prometheus conventions: ``_total`` for
counters, seconds for durations.

``GET /metrics`` takes the API key, a staff session, or
``HUMANINPUT_METRICS_TOKEN`` — a token that opens this page and nothing else,
for the scraper's configuration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from channels.layers import InMemoryChannelLayer, get_channel_layer
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .loops import serving_loop
from .models import EventType, HumanInputRequest, RequestStatus

logger = logging.getLogger(__name__)

SUBSCRIBERS = Gauge(
    "humaninput_subscribers",
    "Connected subscribers of this process (waiting long polls count as poll).",
    ["transport"],
)
EVENTS_WRITTEN = Counter(
    "humaninput_events_written",
    "Events committed to the log by this process.",
    ["type"],
)
EVENTS_PUBLISHED = Counter(
    "humaninput_events_published",
    "Events whose doorbell this process handed to the channel layer.",
)
PUBLISH_FAILURES = Counter(
    "humaninput_publish_failures",
    "Doorbells the channel layer refused or timed out on; subscribers get those events on catch-up.",
)
CATCHUP_READS = Counter(
    "humaninput_catchup_reads",
    "Periodic re-reads of the log by subscribers; found=yes means a doorbell was missed.",
    ["found"],
)
EVENTS_DELIVERED = Counter(
    "humaninput_events_delivered",
    "Events handed to a subscriber, by transport and by what brought them (doorbell or log read).",
    ["transport", "via"],
)
SLOW_CLIENTS_DROPPED = Counter(
    "humaninput_slow_clients_dropped",
    "Connections dropped because their client stopped reading (see events_app.server.backpressure).",
    ["transport"],
)
CROSS_PROCESS_DOORBELLS = Counter(
    "humaninput_cross_process_doorbells",
    "Doorbells rung here because an execution's log grew in the database, whoever wrote it "
    "(embedded SQLite: how other processes' events reach this one, see events_app.streaming.crossprocess).",
)
PUBLISH_DELIVER_SECONDS = Histogram(
    "humaninput_publish_deliver_seconds",
    "From the doorbell's publish to the event being handed to a subscriber's transport.",
    ["transport"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# Every label value exported from the start (as 0), so rates and alerts see the series.
for _type in EventType.values:
    EVENTS_WRITTEN.labels(_type)
for _found in ("yes", "no"):
    CATCHUP_READS.labels(_found)
for _transport in ("ws", "sse", "poll", "inbox"):
    SUBSCRIBERS.labels(_transport)
for _transport in ("http", "ws"):
    SLOW_CLIENTS_DROPPED.labels(_transport)
for _transport in ("ws", "sse", "poll"):
    PUBLISH_DELIVER_SECONDS.labels(_transport)
    for _via in ("doorbell", "log"):
        EVENTS_DELIVERED.labels(_transport, _via)


class PendingRequestsCollector(Collector):
    """``humaninput_pending_requests``, counted in the database when scraped."""

    NAME = "humaninput_pending_requests"
    HELP = "Requests waiting for a human (all processes; read from the database)."

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Declared without a value, so registering never touches the database.
        yield GaugeMetricFamily(self.NAME, self.HELP)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            pending = HumanInputRequest.objects.filter(status=RequestStatus.PENDING).count()
        except Exception as error:
            logger.warning("metrics: could not count pending requests: %r", error)
            return
        yield GaugeMetricFamily(self.NAME, self.HELP, value=pending)


def _event_loop_counts() -> tuple[int, int | None]:
    """(asyncio tasks of the running loop, channels in in-memory layer groups or None)."""
    layer = get_channel_layer()
    members = None
    if isinstance(layer, InMemoryChannelLayer):
        members = sum(len(channels) for channels in layer.groups.values())
    return len(asyncio.all_tasks()), members


# A scrape waits this long for the loop to count (a stopping loop never answers).
READ_TIMEOUT_SECONDS = 1.0


def _on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


async def _aevent_loop_counts() -> tuple[int, int | None]:
    return _event_loop_counts()


class EventLoopCollector(Collector):
    """What a leak would grow, read on the server's event loop when scraped.

    ``humaninput_asyncio_tasks``: every subscriber, stream and long poll runs
    as tasks, so after its clients have gone this returns to its idle level.
    ``humaninput_channel_layer_group_members``: memberships held by the
    in-memory channel layer (embedded mode; with Redis, Redis holds them).
    The scrape runs in a worker thread; the count is taken on the loop.
    """

    TASKS = ("humaninput_asyncio_tasks", "Pending asyncio tasks of this process's event loop.")
    MEMBERS = ("humaninput_channel_layer_group_members", "Channels in groups of the in-memory channel layer.")

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(*self.TASKS)
        yield GaugeMetricFamily(*self.MEMBERS)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        loop = serving_loop()
        if loop is None or not loop.is_running():
            return  # no server here, or one shutting down: nothing to count, nothing to wait for
        try:
            if _on(loop):
                tasks, members = _event_loop_counts()  # scraped on the loop itself (in-process tests)
            else:
                future = asyncio.run_coroutine_threadsafe(_aevent_loop_counts(), loop)
                tasks, members = future.result(timeout=READ_TIMEOUT_SECONDS)
        except Exception as error:
            logger.warning("metrics: could not count the event loop's tasks: %r", error)
            return
        yield GaugeMetricFamily(*self.TASKS, value=tasks)
        if members is not None:
            yield GaugeMetricFamily(*self.MEMBERS, value=members)


_registered: list[Collector] = []


def register_collectors() -> None:
    """Called by ``EventsAppConfig.ready()``: add the scrape-time collectors (once) to the registry."""
    if not _registered:
        _registered.extend([PendingRequestsCollector(), EventLoopCollector()])
        for collector in _registered:
            REGISTRY.register(collector)
