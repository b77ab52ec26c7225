"""Plain-Django HTTP helpers shared by the SSE views and the DRF exception handler."""

from __future__ import annotations

from django.http import JsonResponse

from .auth import WWW_AUTHENTICATE
from .exceptions import HumanInputError


def error_headers(error: HumanInputError) -> dict[str, str]:
    """401s name the scheme a client should retry with."""
    return {"WWW-Authenticate": WWW_AUTHENTICATE} if error.http_status == 401 else {}


def error_response(error: HumanInputError) -> JsonResponse:
    """The JSON body and status of a domain error."""
    return JsonResponse(error.as_dict(), status=error.http_status, headers=error_headers(error))
