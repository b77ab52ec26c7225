"""Retention: deleting the logs of executions that finished long ago.

An execution is *prunable* when none of its requests is pending and its
newest activity (a request created or resolved, an event written) is older
than the cutoff. Its requests and events are deleted together, never part of
a log. Its ``ExecutionSequence`` row stays (a few bytes): an event written to
the execution later continues at the next ``sequence`` instead of restarting
at 1, so a subscriber that still holds position N never takes a new event for
one it already has.

Deleting runs in short transactions of about ``batch_size`` rows, so a writer
of another execution waits for one batch at most: on SQLite a write
transaction holds the database's write lock (the project's SQLite settings
take it up front with ``BEGIN IMMEDIATE``), on PostgreSQL only the deleted
rows are locked. Finding candidates is plain reads between the batches,
and on SQLite the prune also rests between batches (see ``pause``).

A request may be created in an execution after the scan picked it. Each
batch therefore locks the executions' ``ExecutionSequence`` rows, which every
writer of those executions needs for its event, and decides again inside its
transaction: a request that committed first keeps its execution whole; one
that had not yet committed waits for the batch, then continues the sequence.

A client resuming from a cursor whose event was pruned gets the execution's
whole retained log, the spec's rule for a well-formed but unknown cursor.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connections, router, transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from .models import ExecutionSequence, HumanInputEvent, HumanInputRequest, RequestStatus

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 10_000
MAX_AGE = timedelta(days=36500)
MAX_PAUSE_SECONDS = 60.0

AGE_RE = re.compile(r"([0-9]{1,12})([dhms])")
AGE_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


@dataclass(frozen=True)
class PruneResult:
    """What one run deleted (or, with ``dry_run``, would delete)."""

    cutoff: datetime
    executions: int
    requests: int
    events: int
    batches: int
    seconds: float
    dry_run: bool

    @property
    def rows(self) -> int:
        return self.requests + self.events


def parse_age(value: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"`` or ``"3600s"`` as a timedelta; ``ValueError`` otherwise.

    One unit only and no bare numbers: ``30`` could be days or seconds, and a
    guess here deletes data.
    """
    match = AGE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r} is not an age like 30d, 12h, 90m or 3600s.")
    seconds = int(match[1]) * AGE_UNIT_SECONDS[match[2]]
    if seconds <= 0:
        raise ValueError("The age must be greater than zero.")
    if seconds > MAX_AGE.total_seconds():
        raise ValueError(f"The age must be at most {MAX_AGE.days} days.")
    return timedelta(seconds=seconds)


def prune_executions(
    *,
    older_than: timedelta,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    pause: float | None = None,
    now: datetime | None = None,
) -> PruneResult:
    """Delete the requests and events of executions finished more than ``older_than`` ago.

    Call it outside any transaction: each batch commits on its own, which is
    what keeps writers from waiting. ``batch_size`` bounds the rows (requests
    plus events) a batch deletes, except that an execution is never split:
    one bigger than ``batch_size`` is a batch of its own. With ``dry_run``
    nothing is written and the result counts what would go.

    ``pause`` seconds pass between two batches. By default that is as long
    as the previous batch took on SQLite and nothing elsewhere: a writer
    waiting for SQLite's write lock retries on a backoff of up to 100 ms and
    would otherwise keep missing the moment between two batches.
    """
    if older_than <= timedelta(0):
        raise ValueError("older_than must be positive.")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}.")
    if pause is not None and not 0 <= pause <= MAX_PAUSE_SECONDS:
        raise ValueError(f"pause must be between 0 and {MAX_PAUSE_SECONDS} seconds.")
    locks_whole_database = connections[router.db_for_write(HumanInputRequest)].vendor == "sqlite"
    cutoff = (now or timezone.now()) - older_than
    started = time.monotonic()
    executions = requests = events = batches = 0
    last_batch_seconds = 0.0
    found = _prunable_executions(cutoff=cutoff, page_size=batch_size)
    for batch in _split_batches(found, batch_size=batch_size):
        if batches and not dry_run:
            _rest(pause if pause is not None else last_batch_seconds if locks_whole_database else 0.0)
        batch_started = time.monotonic()
        if dry_run:
            counted = (
                len(batch),
                sum(footprint.requests for footprint in batch.values()),
                sum(footprint.events for footprint in batch.values()),
            )
        else:
            counted = _delete_batch(execution_ids=list(batch), cutoff=cutoff)
        last_batch_seconds = time.monotonic() - batch_started
        batches += 1
        executions += counted[0]
        requests += counted[1]
        events += counted[2]
        logger.info(
            "%s batch %d: %d execution(s), %d request(s), %d event(s) in %.3f s",
            "dry run: would prune" if dry_run else "pruned",
            batches,
            *counted,
            last_batch_seconds,
            extra={
                "cutoff": cutoff.isoformat(),
                "dry_run": dry_run,
                "executions": counted[0],
                "requests": counted[1],
                "events": counted[2],
            },
        )
    return PruneResult(
        cutoff=cutoff,
        executions=executions,
        requests=requests,
        events=events,
        batches=batches,
        seconds=time.monotonic() - started,
        dry_run=dry_run,
    )


def _rest(seconds: float) -> None:
    """Leave the database to writers for ``seconds`` between two batches."""
    if seconds > 0:
        time.sleep(seconds)


def _candidate_pages(*, cutoff: datetime, page_size: int) -> Iterator[list[str]]:
    """Execution ids with a request older than ``cutoff``, ``page_size`` at a time, by id.

    Every request of a prunable execution is older than the cutoff, so this
    over-approximates; ``_prunable`` decides. Paging by id (not offset)
    stays correct while the caller deletes what it was given.
    """
    after = ""
    while True:
        page = list(
            HumanInputRequest.objects.filter(created_at__lt=cutoff, execution_id__gt=after)
            .order_by("execution_id")
            .values_list("execution_id", flat=True)
            .distinct()[:page_size]
        )
        if not page:
            return
        yield page
        if len(page) < page_size:
            return
        after = page[-1]


@dataclass(frozen=True)
class Footprint:
    """The rows one execution's log occupies."""

    requests: int
    events: int

    @property
    def rows(self) -> int:
        return self.requests + self.events


def _prunable(*, execution_ids: list[str], cutoff: datetime) -> dict[str, Footprint]:
    """Those of ``execution_ids`` that are prunable at ``cutoff``, with their sizes, in id order."""
    request_stats = (
        HumanInputRequest.objects.filter(execution_id__in=execution_ids)
        .order_by("execution_id")
        .values("execution_id")
        .annotate(
            count=Count("pk"),
            pending=Count("pk", filter=Q(status=RequestStatus.PENDING)),
            newest_created=Max("created_at"),
            newest_responded=Max("responded_at"),
        )
    )
    event_stats = {
        row["execution_id"]: row
        for row in HumanInputEvent.objects.filter(execution_id__in=execution_ids)
        .order_by()
        .values("execution_id")
        .annotate(count=Count("pk"), newest=Max("created_at"))
    }
    prunable: dict[str, Footprint] = {}
    for row in request_stats:
        events = event_stats.get(row["execution_id"], {"count": 0, "newest": None})
        moments = (row["newest_created"], row["newest_responded"], events["newest"])
        if row["pending"] == 0 and max(moment for moment in moments if moment is not None) < cutoff:
            prunable[row["execution_id"]] = Footprint(requests=row["count"], events=events["count"])
    return prunable


def _prunable_executions(*, cutoff: datetime, page_size: int) -> Iterator[tuple[str, Footprint]]:
    """Every execution prunable at ``cutoff`` with its size, in id order, read a page at a time."""
    for candidates in _candidate_pages(cutoff=cutoff, page_size=page_size):
        yield from _prunable(execution_ids=candidates, cutoff=cutoff).items()


def _split_batches(
    found: Iterable[tuple[str, Footprint]], *, batch_size: int
) -> Iterator[dict[str, Footprint]]:
    """Consecutive groups of executions of at most ``batch_size`` rows (or one execution)."""
    batch: dict[str, Footprint] = {}
    rows = 0
    for execution_id, footprint in found:
        if batch and rows + footprint.rows > batch_size:
            yield batch
            batch, rows = {}, 0
        batch[execution_id] = footprint
        rows += footprint.rows
    if batch:
        yield batch


def _delete_batch(*, execution_ids: list[str], cutoff: datetime) -> tuple[int, int, int]:
    """Delete the logs of those of ``execution_ids`` still prunable, in one transaction.

    The ``ExecutionSequence`` rows are locked first (in id order, so two
    prunes cannot deadlock): a writer of one of these executions needs its row
    for the event, so nothing is appended to them until this commits, and the
    decision made next holds. On SQLite ``select_for_update`` does nothing;
    the transaction's write lock already excludes every other writer.
    """
    with transaction.atomic():
        list(
            ExecutionSequence.objects.select_for_update()
            .filter(execution_id__in=execution_ids)
            .order_by("execution_id")
            .values_list("execution_id", flat=True)
        )
        confirmed = list(_prunable(execution_ids=execution_ids, cutoff=cutoff))
        if not confirmed:
            return 0, 0, 0
        # The requests' CASCADE takes their events along (counted separately).
        _, deleted = HumanInputRequest.objects.filter(execution_id__in=confirmed).only("pk").delete()
    return (
        len(confirmed),
        deleted.get(HumanInputRequest._meta.label, 0),
        deleted.get(HumanInputEvent._meta.label, 0),
    )
