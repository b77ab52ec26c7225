"""The plain log format: ``time level logger message``, then the record's context as ``key=value``.

The services log each state change with its execution, request, event,
sequence, status and who as ``extra`` (``services.py``, ``signals.py``). The
JSON format writes every extra field; a ``%``-format string writes only the
fields it names, and a record that lacks one would fail to format. So this
formatter keeps the line's start as it was (tools split records on the
leading timestamp) and appends whichever of ``CONTEXT_FIELDS`` a record has,
before any traceback.
"""

from __future__ import annotations

import json
import logging
from typing import Any

# The context services pass as ``extra``; in this order on the line.
CONTEXT_FIELDS = (
    "execution_id",
    "request_id",
    "event_id",
    "sequence",
    "status",
    "responded_by",
    "token_id",
    "scope",
    "by",
    "error",
)

_NEEDS_QUOTES = frozenset(' "=\\')


def format_value(value: Any) -> str:
    """``value`` as one token: bare when that is unambiguous, else a JSON string.

    Values can come from clients (an answer's author, an error text), so
    anything with a space, a quote, ``=`` or a character that is not
    printable (a newline would forge a log record) is quoted and escaped.
    """
    text = str(value)
    if text and text.isprintable() and not _NEEDS_QUOTES.intersection(text):
        return text
    return json.dumps(text)


class PlainFormatter(logging.Formatter):
    """``logging.Formatter`` that appends ``key=value`` for each context field a record carries.

    Empty values (``responded_by`` of a request nobody answered yet) are left out.
    """

    def __init__(self, *args: Any, fields: tuple[str, ...] = CONTEXT_FIELDS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields = fields

    def formatMessage(self, record: logging.LogRecord) -> str:
        """Called by ``format`` for the first part of the record, before an exception or stack."""
        line = super().formatMessage(record)
        context = " ".join(
            f"{name}={format_value(value)}"
            for name in self.fields
            if (value := getattr(record, name, None)) is not None and value != ""
        )
        return f"{line} {context}" if context else line
