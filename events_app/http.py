"""Plain-Django HTTP helpers shared by the SSE views, the DRF views and the DRF exception handler."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .auth import WWW_AUTHENTICATE
from .exceptions import HumanInputError, MethodNotAllowed, UnknownEndpoint


def error_headers(error: HumanInputError) -> dict[str, str]:
    """401s name the scheme a client should retry with; 405s the methods that would work."""
    if error.http_status == 401:
        return {"WWW-Authenticate": WWW_AUTHENTICATE}
    if isinstance(error, MethodNotAllowed):
        return {"Allow": ", ".join(error.allowed)}
    return {}


def error_response(error: HumanInputError) -> JsonResponse:
    """The JSON body and status of a domain error."""
    return JsonResponse(error.as_dict(), status=error.http_status, headers=error_headers(error))


def get_only(view: Callable[..., Any]) -> Callable[..., Any]:
    """An async view that answers anything but GET with a JSON 405 and ``Allow: GET``.

    CSRF-exempt, since it never writes: otherwise Django's CSRF middleware
    would answer a POST with its HTML 403 before the method was checked.
    """

    @functools.wraps(view)
    async def only_get(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method != "GET":
            return error_response(MethodNotAllowed(("GET",)))
        return await view(request, *args, **kwargs)

    return csrf_exempt(only_get)


@csrf_exempt
def unknown_endpoint(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Any other path under our API's prefixes: a JSON 404, as every answer of ours is JSON."""
    return error_response(UnknownEndpoint())
