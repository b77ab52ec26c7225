"""The request a human answers, and the append-only event log every transport reads."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone


def default_reason_flags() -> dict[str, bool]:
    return {"ambiguity": False, "missing_field": False}


class RequestStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"
    EXPIRED = "expired", "Expired"


class EventType(models.TextChoices):
    REQUIRED = "human_input_required", "Input required"
    COMPLETED = "human_input_completed", "Input completed"
    CANCELLED = "human_input_cancelled", "Request cancelled"
    EXPIRED = "human_input_expired", "Request expired"


class HumanInputRequest(models.Model):
    """One question to a human. Only a ``pending`` request changes state, once."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    execution_id = models.CharField(max_length=128, db_index=True)
    crew_id = models.CharField(max_length=255, blank=True, default="")
    task_id = models.CharField(max_length=255, blank=True, default="")
    agent_id = models.CharField(max_length=255, blank=True, default="")
    prompt = models.TextField()
    context = models.TextField(blank=True, default="")
    reason_flags = models.JSONField(default=default_reason_flags)
    status = models.CharField(
        max_length=16, choices=RequestStatus.choices, default=RequestStatus.PENDING, db_index=True
    )
    response = models.TextField(blank=True, default="")
    responded_by = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    responded_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["execution_id", "status"])]

    def __str__(self) -> str:
        return f"{self.execution_id}: {self.prompt[:60]}"

    @property
    def is_pending(self) -> bool:
        return self.status == RequestStatus.PENDING


class HumanInputEvent(models.Model):
    """One entry of an execution's log; ``payload`` is exactly what goes on the wire."""

    event_id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    execution_id = models.CharField(max_length=128)
    sequence = models.PositiveBigIntegerField()
    type = models.CharField(max_length=32, choices=EventType.choices)
    payload = models.JSONField()
    request = models.ForeignKey(HumanInputRequest, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["execution_id", "sequence"]
        constraints = [
            models.UniqueConstraint(
                fields=["execution_id", "sequence"], name="humaninput_event_unique_sequence"
            ),
            models.CheckConstraint(
                condition=models.Q(sequence__gte=1), name="humaninput_event_sequence_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.execution_id}#{self.sequence} {self.type}"


class ExecutionSequence(models.Model):
    """The last ``sequence`` handed out per execution.

    Allocation is one UPSERT on this row inside the writer's transaction: the
    row lock (PostgreSQL) or the write lock (SQLite) serializes writers of the
    same execution until commit, and a rollback takes the number back, so
    sequences have neither gaps nor duplicates.
    """

    execution_id = models.CharField(max_length=128, primary_key=True)
    last_sequence = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.execution_id} @ {self.last_sequence}"


class ScopedToken(models.Model):
    """A token minted by ``POST /api/tokens``: the audit record, and the revocation list.

    The token itself is signed and carries its execution, scope and expiry, so
    checking it needs no row; the row records who issued it and, once
    ``revoked_at`` is set, refuses it on every transport before it expires.
    """

    token_id = models.CharField(max_length=32, primary_key=True)
    execution_id = models.CharField(max_length=128, db_index=True)
    scope = models.CharField(max_length=16)
    issued_by = models.CharField(max_length=255, blank=True, default="")
    issued_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        ordering = ["-issued_at"]

    def __str__(self) -> str:
        return f"token:{self.token_id} ({self.scope} on {self.execution_id})"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None
