"""Input and output shapes of the REST API.

Inputs are strict: a body must be a JSON object, unknown fields are refused,
strings must be strings (no silent ``5`` → ``"5"``), flags must be booleans,
and text is capped at ``HUMANINPUT_MAX_TEXT_BYTES`` of UTF-8.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..auth import SCOPES
from ..conf import humaninput_settings
from ..exceptions import InvalidExecutionId, InvalidParameter
from ..models import HumanInputRequest, RequestStatus, ScopedToken
from ..params import validate_execution_id
from ..services import validate_text
from .schema import EXECUTION_ID_SCHEMA, NO_NUL_PATTERN


def _utf8(value: str) -> bytes:
    """``value`` as UTF-8; lone surrogates (valid JSON escapes, not text) are refused."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise serializers.ValidationError("Must be valid Unicode text (no lone surrogates).") from None


# ``validate_text`` refuses NUL first; this validator declares it, as the schema's pattern. It
# needs one character: DRF passes "" by before validators (allow_blank decides), and the schema
# offers "" as a branch of its own where blank is allowed.
NO_NUL = RegexValidator(r"\A[^\x00]+\Z", "Must not contain NUL characters.")


class StrictCharField(serializers.CharField):
    """A string and nothing else, at most ``MAX_TEXT_BYTES`` long; whitespace kept."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        if not kwargs.get("allow_blank", False):
            kwargs.setdefault("min_length", 1)  # so the schema says what "may not be blank" means
        super().__init__(**kwargs)
        self.validators.append(NO_NUL)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        try:
            validate_text(data, field=self.field_name or "value")
        except InvalidParameter as error:
            raise serializers.ValidationError(error.detail) from None
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class StrictNumberField(serializers.FloatField):
    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: as in JSON Schema, ``5.0`` is one too (Python parses it as a float)."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, float) and data.is_integer():
            data = int(data)
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field(EXECUTION_ID_SCHEMA)
class ExecutionIdField(serializers.CharField):
    def to_internal_value(self, data: Any) -> str:
        try:
            return validate_execution_id(data)
        except InvalidExecutionId as error:
            raise serializers.ValidationError(error.detail) from None


class JSONObjectField(serializers.JSONField):
    """A JSON object of bounded size."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        try:
            # No NaN/Infinity (1e999 parses as inf) and no lone surrogates:
            # neither is valid JSON text that PostgreSQL's jsonb will store.
            text = json.dumps(data, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            raise serializers.ValidationError("Must be finite, JSON-serializable data.") from None
        if "\x00" in text or "\\u0000" in text:
            raise serializers.ValidationError("Must not contain NUL characters.")
        size = len(_utf8(text))
        if size > humaninput_settings.MAX_TEXT_BYTES:
            raise serializers.ValidationError(
                f"Must be at most {humaninput_settings.MAX_TEXT_BYTES} bytes as JSON."
            )
        return data


class StrictSerializer(serializers.Serializer):
    """Refuses bodies that are not objects and fields it does not know."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        errors = {name: ["Unknown field."] for name in sorted(set(data) - set(self.fields))}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as error:
            if isinstance(error.detail, dict):
                errors = {**error.detail, **errors}
            else:
                raise
        if errors:
            raise serializers.ValidationError(errors)
        return value


MAX_REASON_FLAGS, MAX_REASON_FLAG_NAME = 32, 64


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "boolean"},
        "maxProperties": MAX_REASON_FLAGS,
        "propertyNames": {"maxLength": MAX_REASON_FLAG_NAME, "pattern": NO_NUL_PATTERN},
    }
)
class ReasonFlagsField(serializers.DictField):
    """Named booleans; ``RequestCreateInput.validate_reason_flags`` enforces the bounds."""


class RequestCreateInput(StrictSerializer):
    execution_id = ExecutionIdField()
    prompt = StrictCharField()
    crew_id = StrictCharField(required=False, allow_blank=True, max_length=255, default="")
    task_id = StrictCharField(required=False, allow_blank=True, max_length=255, default="")
    agent_id = StrictCharField(required=False, allow_blank=True, max_length=255, default="")
    context = StrictCharField(required=False, allow_blank=True, default="")
    reason_flags = ReasonFlagsField(child=StrictBooleanField(), required=False, default=dict)
    timeout_seconds = StrictNumberField(required=False, allow_null=True, default=None, min_value=0.001)
    metadata = JSONObjectField(required=False, default=dict)

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        # For the schema (the current setting, per instance); validate_timeout_seconds enforces it.
        fields["timeout_seconds"].max_value = humaninput_settings.MAX_TIMEOUT_SECONDS
        return fields

    def validate_timeout_seconds(self, value: float | None) -> float | None:
        if value is not None and value > humaninput_settings.MAX_TIMEOUT_SECONDS:
            raise serializers.ValidationError(
                f"Must be at most {humaninput_settings.MAX_TIMEOUT_SECONDS:g} seconds."
            )
        return value

    def validate_reason_flags(self, value: dict[str, bool]) -> dict[str, bool]:
        if len(value) > MAX_REASON_FLAGS or any(len(key) > MAX_REASON_FLAG_NAME for key in value):
            raise serializers.ValidationError(
                f"At most {MAX_REASON_FLAGS} flags with names of at most {MAX_REASON_FLAG_NAME} characters."
            )
        for key in value:
            if "\x00" in key:
                raise serializers.ValidationError("Flag names must not contain NUL characters.")
            _utf8(key)
        return value


class RespondInput(StrictSerializer):
    response = StrictCharField(allow_blank=True)


class CancelInput(StrictSerializer):
    pass


class NamedChoiceField(serializers.ChoiceField):
    """A choice field documented as one named enum component (``enum_name``), not inline.

    drf-spectacular would otherwise name the enums of same-named fields (a
    request's ``status``, the health ``status``) by its settings'
    ``ENUM_NAME_OVERRIDES``, which are the host's to set, not ours.
    """

    enum_name = ""
    choice_values: tuple[str, ...] = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=self.choice_values, **kwargs)


class RequestStatusField(NamedChoiceField):
    enum_name = "RequestStatusEnum"
    choice_values = tuple(RequestStatus.values)


class HealthStatusField(NamedChoiceField):
    enum_name = "HealthStatusEnum"
    choice_values = ("healthy", "unhealthy")


class RequestOutput(serializers.ModelSerializer):
    status = RequestStatusField(read_only=True)

    class Meta:
        model = HumanInputRequest
        fields = [
            "id",
            "execution_id",
            "crew_id",
            "task_id",
            "agent_id",
            "prompt",
            "context",
            "reason_flags",
            "status",
            "response",
            "responded_by",
            "created_at",
            "responded_at",
            "expires_at",
            "metadata",
        ]
        read_only_fields = fields


class RequestCreatedOutput(RequestOutput):
    """The new request plus its ``human_input_required`` event: a cursor to wait from."""

    event_id = serializers.UUIDField(read_only=True)
    sequence = serializers.IntegerField(read_only=True)

    class Meta(RequestOutput.Meta):
        fields = [*RequestOutput.Meta.fields, "event_id", "sequence"]
        read_only_fields = fields


class RequestListFilters(serializers.Serializer):
    """Query parameters of the list; others (``cursor``, ``token``) belong to other layers."""

    execution_id = ExecutionIdField(required=False)
    status = RequestStatusField(required=False)


class RequestPageOutput(serializers.Serializer):
    """One page of the list; follow ``next`` (a URL with its cursor) for older requests."""

    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = RequestOutput(many=True)


class ConflictOutput(serializers.Serializer):
    code = serializers.CharField()
    detail = serializers.CharField()
    status = serializers.CharField()
    request_id = serializers.UUIDField()
    request = RequestOutput()


class ErrorOutput(serializers.Serializer):
    code = serializers.CharField()
    detail = serializers.CharField()


class TokenInput(StrictSerializer):
    execution_id = ExecutionIdField()
    scope = serializers.ChoiceField(choices=SCOPES)
    ttl_seconds = StrictIntegerField(required=False, min_value=1)

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        # For the schema (the current setting, per instance); validate_ttl_seconds enforces it.
        fields["ttl_seconds"].max_value = humaninput_settings.TOKEN_MAX_TTL_SECONDS
        return fields

    def validate_ttl_seconds(self, value: int) -> int:
        if value > humaninput_settings.TOKEN_MAX_TTL_SECONDS:
            raise serializers.ValidationError(
                f"Must be at most {humaninput_settings.TOKEN_MAX_TTL_SECONDS} seconds."
            )
        return value


class TokenOutput(serializers.Serializer):
    token = serializers.CharField()
    token_id = serializers.CharField(help_text="What `responded_by` and revocation name this token by.")
    execution_id = serializers.CharField()
    scope = serializers.ChoiceField(choices=SCOPES)
    expires_at = serializers.DateTimeField()


class TokenRecordOutput(serializers.ModelSerializer):
    class Meta:
        model = ScopedToken
        fields = [
            "token_id",
            "execution_id",
            "scope",
            "issued_by",
            "issued_at",
            "expires_at",
            "revoked_at",
            "revoked_by",
        ]


class PollOutput(serializers.Serializer):
    events = serializers.ListField(child=serializers.DictField())
    last_event_id = serializers.UUIDField(allow_null=True)


class HealthOutput(serializers.Serializer):
    status = HealthStatusField()
    timestamp = serializers.CharField()
    checks = serializers.DictField(child=serializers.CharField())
