"""One exception handler: domain errors and DRF's own become ``{"code", "detail"}`` JSON."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..exceptions import HumanInputError
from ..http import error_headers


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, HumanInputError):
        return Response(exc.as_dict(), status=exc.http_status, headers=error_headers(exc))
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.APIException):
        if isinstance(response.data, dict) and "detail" in response.data:
            response.data = {
                "code": exc.get_codes() if isinstance(exc.detail, str) else "invalid",
                **response.data,
            }
        else:
            response.data = {"code": "invalid", "detail": "Invalid input.", "errors": response.data}
    return response
