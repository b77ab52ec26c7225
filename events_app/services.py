"""The only write path: create, respond, cancel, expire; and issuing and revoking tokens.

Each function is one transaction that changes a request and appends its
event to the log; the ``post_save`` receiver in ``signals`` announces the
event after commit. Functions take keyword-only arguments, return model
objects and raise the domain errors of ``exceptions``.

Every state change is logged once it has committed (one record with the
execution, request, event, sequence, status and who), and counted in
``humaninput_events_written_total``.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connections, router, transaction
from django.utils import timezone

from .auth import issue_token
from .conf import humaninput_settings
from .events import build_payload
from .exceptions import AlreadyAnswered, AlreadyResolved, InvalidParameter, NotFound
from .metrics import EVENTS_WRITTEN
from .models import (
    EventType,
    ExecutionSequence,
    HumanInputEvent,
    HumanInputRequest,
    RequestStatus,
    ScopedToken,
    default_reason_flags,
)
from .params import parse_uuid_text, validate_execution_id

logger = logging.getLogger(__name__)


def _allocate_sequence(*, execution_id: str, using: str) -> int:
    """Next ``sequence`` of ``execution_id``; call inside the writer's transaction.

    A single ``INSERT .. ON CONFLICT DO UPDATE .. RETURNING`` (PostgreSQL and
    SQLite >= 3.35): the first event creates the counter at 1, later ones
    increment it under the row's write lock, which is held until commit.
    """
    connection = connections[using]
    table = connection.ops.quote_name(ExecutionSequence._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (execution_id, last_sequence) VALUES (%s, 1) "
            f"ON CONFLICT (execution_id) DO UPDATE "
            f"SET last_sequence = {table}.last_sequence + 1 "
            f"RETURNING last_sequence",
            [execution_id],
        )
        return int(cursor.fetchone()[0])


def _append_event(*, request: HumanInputRequest, event_type: str, now: datetime) -> HumanInputEvent:
    using = router.db_for_write(HumanInputEvent)
    sequence = _allocate_sequence(execution_id=request.execution_id, using=using)
    event_id = uuid.uuid4()
    payload = build_payload(
        event_type=event_type, request=request, event_id=event_id, sequence=sequence, timestamp=now
    )
    event = HumanInputEvent.objects.using(using).create(
        event_id=event_id,
        execution_id=request.execution_id,
        sequence=sequence,
        type=event_type,
        payload=payload,
        request=request,
        created_at=now,
    )
    change = {
        "execution_id": request.execution_id,
        "request_id": str(request.id),
        "event_id": str(event_id),
        "sequence": sequence,
        "event_type": event_type,
        "status": request.status,
        "responded_by": request.responded_by,
    }
    transaction.on_commit(functools.partial(_record_state_change, change), using=using)
    return event


def _record_state_change(change: dict[str, Any]) -> None:
    """Called once the change has committed: one log record and one count per event."""
    EVENTS_WRITTEN.labels(change["event_type"]).inc()
    logger.info("request %s: %s", change["status"], change["event_type"], extra=change)


def validate_text(value: Any, *, field: str) -> str:
    """``value`` if it is storable text: a str of valid Unicode (no lone surrogates),
    without NUL, at most ``HUMANINPUT_MAX_TEXT_BYTES`` of UTF-8. Else ``InvalidParameter``.

    PostgreSQL refuses NUL and lone surrogates; checking here keeps every
    write path (REST, WebSocket, commands) from turning them into a 500.
    """
    if not isinstance(value, str):
        raise InvalidParameter(f"{field} must be a string.", field=field)
    if "\x00" in value:
        raise InvalidParameter(f"{field} must not contain NUL characters.", field=field)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidParameter(f"{field} must be valid Unicode text.", field=field) from None
    limit = humaninput_settings.MAX_TEXT_BYTES
    if size > limit:
        raise InvalidParameter(f"{field} must be at most {limit} bytes of UTF-8.", field=field)
    return value


def coerce_request_id(value: Any) -> uuid.UUID:
    """A request id from user input, or ``InvalidParameter``."""
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise InvalidParameter("request_id must be a UUID string.", field="request_id")
    request_id = parse_uuid_text(value)
    if request_id is None:
        raise InvalidParameter("request_id must be a UUID.", field="request_id")
    return request_id


def request_create(
    *,
    execution_id: str,
    prompt: str,
    crew_id: str = "",
    task_id: str = "",
    agent_id: str = "",
    context: str = "",
    reason_flags: Mapping[str, Any] | None = None,
    timeout_seconds: float | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> HumanInputRequest:
    """Store a new pending request and its ``human_input_required`` event.

    The event is also returned on the request as ``required_event`` (reading it
    back later could already find the answer's event beside it).
    """
    execution_id = validate_execution_id(execution_id)
    for name, text in (("prompt", prompt), ("context", context)):
        validate_text(text, field=name)
    now = timezone.now()
    flags = default_reason_flags()
    flags.update(reason_flags or {})
    with transaction.atomic():
        request = HumanInputRequest.objects.create(
            execution_id=execution_id,
            prompt=prompt,
            crew_id=crew_id,
            task_id=task_id,
            agent_id=agent_id,
            context=context,
            reason_flags=flags,
            metadata=dict(metadata or {}),
            created_at=now,
            expires_at=now + timedelta(seconds=timeout_seconds) if timeout_seconds else None,
        )
        request.required_event = _append_event(request=request, event_type=EventType.REQUIRED, now=now)
    return request


def _close_pending(
    *,
    request_id: Any,
    status: str,
    event_type: str,
    response: str = "",
    responded_by: str = "",
    execution_id: str | None = None,
) -> HumanInputRequest:
    """Move a pending request to ``status`` with its event, first caller wins.

    The row is locked (``SELECT .. FOR UPDATE`` on PostgreSQL, the IMMEDIATE
    write lock on SQLite), so of many concurrent callers exactly one sees
    ``pending``. A request found past ``expires_at`` is expired on the spot
    (that change commits) and the caller gets the conflict.
    """
    request_uuid = coerce_request_id(request_id)
    conflict: AlreadyResolved | None = None
    with transaction.atomic():
        try:
            request = HumanInputRequest.objects.select_for_update().get(pk=request_uuid)
        except HumanInputRequest.DoesNotExist:
            raise NotFound() from None
        if execution_id is not None and request.execution_id != execution_id:
            raise NotFound()  # a connection scoped to one execution sees no other
        now = timezone.now()
        if (
            request.is_pending
            and request.expires_at
            and request.expires_at <= now
            and status != RequestStatus.EXPIRED
        ):
            _record_outcome(
                request=request, status=RequestStatus.EXPIRED, event_type=EventType.EXPIRED, now=now
            )
        if not request.is_pending:
            error = AlreadyAnswered if request.status == RequestStatus.COMPLETED else AlreadyResolved
            conflict = error(
                f"This request is already {request.status}.",
                status=request.status,
                request_id=str(request.id),
            )
            conflict.request = request
        else:
            _record_outcome(
                request=request,
                status=status,
                event_type=event_type,
                now=now,
                response=response,
                responded_by=responded_by,
            )
    if conflict is not None:
        raise conflict
    return request


def _record_outcome(
    *,
    request: HumanInputRequest,
    status: str,
    event_type: str,
    now: datetime,
    response: str = "",
    responded_by: str = "",
) -> None:
    """Give the locked, pending ``request`` its final ``status`` and append its event."""
    request.status = status
    request.response = response
    request.responded_by = responded_by
    request.responded_at = now
    request.save(update_fields=["status", "response", "responded_by", "responded_at"])
    _append_event(request=request, event_type=event_type, now=now)


def request_respond(
    *, request_id: Any, response: str, responded_by: str = "", execution_id: str | None = None
) -> HumanInputRequest:
    """Record the human's answer; a later answer or cancel raises ``AlreadyResolved``.

    ``execution_id``, when given, must be the request's (else ``NotFound``).
    """
    validate_text(response, field="response")
    return _close_pending(
        request_id=request_id,
        execution_id=execution_id,
        status=RequestStatus.COMPLETED,
        event_type=EventType.COMPLETED,
        response=response,
        responded_by=responded_by,
    )


def request_cancel(
    *, request_id: Any, cancelled_by: str = "", execution_id: str | None = None
) -> HumanInputRequest:
    """Withdraw a pending request (``human_input_cancelled``)."""
    return _close_pending(
        request_id=request_id,
        execution_id=execution_id,
        status=RequestStatus.CANCELLED,
        event_type=EventType.CANCELLED,
        responded_by=cancelled_by,
    )


def request_expire(*, request_id: Any) -> HumanInputRequest:
    """Mark a pending request expired (``human_input_expired``)."""
    return _close_pending(request_id=request_id, status=RequestStatus.EXPIRED, event_type=EventType.EXPIRED)


def requests_expire_due(*, now: datetime | None = None) -> list[HumanInputRequest]:
    """Expire every pending request whose ``expires_at`` has passed; returns those expired."""
    now = now or timezone.now()
    due = HumanInputRequest.objects.filter(status=RequestStatus.PENDING, expires_at__lte=now).values_list(
        "id", flat=True
    )
    expired = []
    for request_id in list(due):
        try:
            expired.append(request_expire(request_id=request_id))
        except AlreadyResolved:
            continue  # answered or cancelled meanwhile: the answer stands
    return expired


def token_issue(
    *, execution_id: str, scope: str, ttl_seconds: int | None = None, issued_by: str = ""
) -> tuple[str, ScopedToken]:
    """Mint a scoped token and record it (who issued it, until when); returns it and its record."""
    token_id = uuid.uuid4().hex
    token, expires = issue_token(
        execution_id=execution_id, scope=scope, ttl_seconds=ttl_seconds, token_id=token_id
    )
    record = ScopedToken.objects.create(
        token_id=token_id,
        execution_id=execution_id,
        scope=scope,
        issued_by=issued_by,
        expires_at=datetime.fromtimestamp(expires, tz=UTC),
    )
    logger.info(
        "token issued",
        extra={"execution_id": execution_id, "token_id": token_id, "scope": scope, "by": issued_by},
    )
    return token, record


def token_revoke(*, token_id: str, revoked_by: str = "") -> ScopedToken:
    """Put a token on the revocation list (idempotent: the first revocation's time and author stay).

    Every transport refuses it from now on; connections already open with it
    are closed at their next catch-up. Raises ``NotFound`` for an unknown id.
    """
    with transaction.atomic():
        record = ScopedToken.objects.select_for_update().filter(token_id=str(token_id)[:32]).first()
        if record is None or record.token_id != token_id:
            raise NotFound("No such token.")
        if record.revoked_at is None:
            record.revoked_at = timezone.now()
            record.revoked_by = revoked_by
            record.save(update_fields=["revoked_at", "revoked_by"])
    logger.info(
        "token revoked",
        extra={"execution_id": record.execution_id, "token_id": token_id, "by": record.revoked_by},
    )
    return record
