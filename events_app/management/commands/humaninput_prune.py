"""``manage.py humaninput_prune [--older-than 30d]``: delete the logs of long-finished executions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from events_app import retention
from events_app.conf import humaninput_settings


class Command(BaseCommand):
    help = (
        "Delete the requests and events of executions with no pending request and no activity "
        "for longer than --older-than (default: HUMANINPUT_RETENTION_DAYS), in short batches. "
        "See docs/retention.md."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            metavar="AGE",
            help="prune executions idle longer than this: 30d, 12h, 90m or 3600s "
            "(default: HUMANINPUT_RETENTION_DAYS days)",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            metavar="ROWS",
            default=retention.DEFAULT_BATCH_SIZE,
            help=f"rows (requests + events) per transaction (default {retention.DEFAULT_BATCH_SIZE})",
        )
        parser.add_argument(
            "--pause",
            type=float,
            metavar="SECONDS",
            help="rest between batches (default: as long as the batch took on SQLite, 0 on PostgreSQL)",
        )
        parser.add_argument("--dry-run", action="store_true", help="only count what would be deleted")

    def handle(self, *args: Any, **options: Any) -> None:
        older_than = self._older_than(options["older_than"])
        if not 1 <= options["batch_size"] <= retention.MAX_BATCH_SIZE:
            raise CommandError(f"--batch-size must be between 1 and {retention.MAX_BATCH_SIZE}.")
        pause = options["pause"]
        if pause is not None and not 0 <= pause <= retention.MAX_PAUSE_SECONDS:
            raise CommandError(f"--pause must be between 0 and {retention.MAX_PAUSE_SECONDS:g} seconds.")
        result = retention.prune_executions(
            older_than=older_than,
            batch_size=options["batch_size"],
            dry_run=options["dry_run"],
            pause=pause,
        )
        verb = "Would delete" if result.dry_run else "Deleted"
        self.stdout.write(
            f"{verb} {result.executions} execution(s): {result.requests} request(s), "
            f"{result.events} event(s), finished before {result.cutoff.isoformat()}; "
            f"{result.batches} batch(es) in {result.seconds:.2f} s."
        )

    @staticmethod
    def _older_than(value: str | None) -> timedelta:
        if value is None:
            days = humaninput_settings.RETENTION_DAYS
            if days is None:
                raise CommandError(
                    "Nothing to prune by: pass --older-than (e.g. 30d) or set HUMANINPUT_RETENTION_DAYS."
                )
            return timedelta(days=days)
        try:
            return retention.parse_age(value)
        except ValueError as error:
            raise CommandError(f"--older-than: {error}") from None
