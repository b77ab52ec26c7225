"""The base classes of every humaninput API view: they carry their whole DRF policy.

A host project's ``REST_FRAMEWORK`` setting configures *its* views: a
dashboard may default to ``SessionAuthentication`` + ``IsAuthenticated``,
a browsable-API renderer, page-number pagination or throttles of its own.
None of that may change how our API authenticates, parses, renders or
reports errors, and none of ours (the API key in particular) may leak into
the host's views. So nothing here reads ``REST_FRAMEWORK``: each policy DRF
would take from it is set on the class, and the schema class is
drf-spectacular's whatever the host's ``DEFAULT_SCHEMA_CLASS`` is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adrf.views import APIView as AsyncAPIView
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import extend_schema
from rest_framework.metadata import SimpleMetadata
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from .authentication import HasPrincipal, HumanInputAuthentication
from .exceptions import exception_handler
from .parsers import SafeJSONParser


class HumanInputPolicy:
    """What DRF would otherwise read from the host's ``REST_FRAMEWORK`` defaults."""

    authentication_classes: list[Any] = [HumanInputAuthentication]
    permission_classes: list[Any] = [HasPrincipal]
    parser_classes: list[Any] = [SafeJSONParser]
    renderer_classes: list[Any] = [JSONRenderer]
    throttle_classes: list[Any] = []
    content_negotiation_class = DefaultContentNegotiation
    metadata_class = SimpleMetadata
    versioning_class = None
    schema = AutoSchema()

    def get_exception_handler(self) -> Callable[..., Any]:
        return exception_handler


class HumanInputAPIView(HumanInputPolicy, APIView):
    """A sync humaninput API view."""


class AsyncHumanInputAPIView(HumanInputPolicy, AsyncAPIView):
    """An async humaninput API view (adrf): waiting holds no thread."""


def document(**kwargs: Any) -> Callable[[Any], Any]:
    """``extend_schema`` on a view method, based on drf-spectacular's ``AutoSchema``.

    ``extend_schema`` builds a method's schema on DRF's ``DEFAULT_SCHEMA_CLASS``
    (the host's setting, DRF's own ``AutoSchema`` by default) unless the method
    already names one; naming ours keeps our schema whatever the host chose.
    """

    def decorator(method: Any) -> Any:
        method.kwargs = {**getattr(method, "kwargs", {}), "schema": AutoSchema}
        return extend_schema(**kwargs)(method)

    return decorator
