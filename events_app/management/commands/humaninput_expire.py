"""``manage.py humaninput_expire [--loop]``: expire overdue requests from a worker process."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from events_app import services


class Command(BaseCommand):
    help = (
        "Expire pending requests past expires_at (with their human_input_expired events). "
        "Servers do this themselves unless HUMANINPUT_EXPIRY_INTERVAL_SECONDS=0."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loop", action="store_true", help="keep running")
        parser.add_argument("--interval", type=float, default=1.0, help="seconds between runs with --loop")

    def handle(self, *args: Any, **options: Any) -> None:
        while True:
            expired = services.requests_expire_due()
            if expired or not options["loop"]:
                self.stdout.write(f"expired {len(expired)} request(s)")
            if not options["loop"]:
                return
            time.sleep(options["interval"])
