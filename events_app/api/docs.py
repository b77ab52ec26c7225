"""The OpenAPI document of our API and its Swagger UI, configured here rather than by the host.

drf-spectacular reads ``SPECTACULAR_SETTINGS`` and DRF's defaults from the
host project's settings, and documents every DRF view the host serves. Ours
apply ``SCHEMA_SETTINGS`` for each request instead (``custom_settings``,
drf-spectacular's own per-view override), list only humaninput's endpoints
(under whatever prefix the host mounted them), and need no credential.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.settings import patched_settings
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from .base import document

SCHEMA_SETTINGS: dict[str, Any] = {
    "TITLE": "humaninput",
    "DESCRIPTION": "Ask a human for input from AI agents; answer over WebSocket, SSE or long polling.",
    "VERSION": "0.1.0",
    "OAS_VERSION": "3.1.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "PREPROCESSING_HOOKS": ["events_app.api.schema.only_humaninput_endpoints"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "events_app.api.schema.add_stream_endpoints",
    ],
}


class SchemaView(SpectacularAPIView):
    """``GET api/schema/``: OpenAPI 3.1 of humaninput's endpoints (YAML, or JSON by ``Accept``)."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = [AllowAny]
    throttle_classes: list[Any] = []
    custom_settings = SCHEMA_SETTINGS
    schema = AutoSchema()

    # drf-spectacular's own ``get`` is annotated on DRF's DEFAULT_SCHEMA_CLASS, which a
    # host may leave at DRF's: its ``check --deploy`` would then fail on this view.
    @document(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class DocsView(SpectacularSwaggerView):
    """``GET api/docs/``: Swagger UI from the sidecar's local assets (no CDN)."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = [AllowAny]
    throttle_classes: list[Any] = []
    title = SCHEMA_SETTINGS["TITLE"]
    schema = AutoSchema()

    @document(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        with patched_settings(SCHEMA_SETTINGS):
            return super().get(request, *args, **kwargs)
