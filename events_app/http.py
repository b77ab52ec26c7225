"""Plain-Django HTTP helpers shared by the SSE views, the DRF views and the DRF exception handler."""

from __future__ import annotations

from django.http import JsonResponse, QueryDict

from .auth import WWW_AUTHENTICATE
from .exceptions import HumanInputError, InvalidParameter


def error_headers(error: HumanInputError) -> dict[str, str]:
    """401s name the scheme a client should retry with."""
    return {"WWW-Authenticate": WWW_AUTHENTICATE} if error.http_status == 401 else {}


def error_response(error: HumanInputError) -> JsonResponse:
    """The JSON body and status of a domain error."""
    return JsonResponse(error.as_dict(), status=error.http_status, headers=error_headers(error))


def query_value(query: QueryDict, name: str) -> str | None:
    """The value of query parameter ``name``, None if absent.

    Given twice (``?limit=1&limit=5``) it is ambiguous, and Django would quietly
    keep the last one, unchecked values before it included: ``InvalidParameter``.
    """
    values = query.getlist(name)
    if len(values) > 1:
        raise InvalidParameter(f"{name} must be given at most once.", field=name)
    return values[0] if values else None
