"""Plain-Django HTTP helpers shared by the SSE view and the DRF exception handler."""

from __future__ import annotations

from django.http import JsonResponse

from .exceptions import HumanInputError


def error_response(error: HumanInputError) -> JsonResponse:
    """The JSON body and status of a domain error (401s also name the scheme)."""
    response = JsonResponse(error.as_dict(), status=error.http_status)
    if error.http_status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="humaninput"'
    return response
