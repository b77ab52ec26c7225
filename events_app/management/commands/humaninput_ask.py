"""``manage.py humaninput_ask <execution_id> "<prompt>"``: emit a request to try things out."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from events_app import services
from events_app.exceptions import HumanInputError


class Command(BaseCommand):
    help = "Create a human-input request (and its human_input_required event) from the command line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("execution_id")
        parser.add_argument("prompt")
        parser.add_argument("--context", default="")
        parser.add_argument("--crew-id", default="")
        parser.add_argument("--task-id", default="")
        parser.add_argument("--agent-id", default="")
        parser.add_argument("--ambiguity", action="store_true", help="set reason_flags.ambiguity")
        parser.add_argument("--missing-field", action="store_true", help="set reason_flags.missing_field")
        parser.add_argument("--timeout", type=float, default=None, help="seconds until it expires")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            request = services.request_create(
                execution_id=options["execution_id"],
                prompt=options["prompt"],
                context=options["context"],
                crew_id=options["crew_id"],
                task_id=options["task_id"],
                agent_id=options["agent_id"],
                reason_flags={"ambiguity": options["ambiguity"], "missing_field": options["missing_field"]},
                timeout_seconds=options["timeout"],
            )
        except HumanInputError as error:
            raise CommandError(error.detail) from None
        self.stdout.write(json.dumps(request.required_event.payload, indent=2))
