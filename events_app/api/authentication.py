"""DRF's view of ``events_app.auth``: the principal becomes ``request.auth``."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from ..auth import WWW_AUTHENTICATE, Credentials, Principal, authenticate


class HumanInputAuthentication(BaseAuthentication):
    """API key or scoped token (Bearer header or ``?token=``), else a staff session.

    Session-authenticated requests get DRF's CSRF check, like
    ``SessionAuthentication``: a cookie alone must not be able to write.
    """

    def authenticate(self, request: Request) -> tuple[Any, Principal]:
        credentials = Credentials.of_request(request._request)
        # A refused credential raises our NotAuthenticated (or TokenRevoked), which the
        # API's exception handler turns into the same 401 body as every transport's.
        principal = authenticate(credentials)
        if principal.via_session:
            SessionAuthentication().enforce_csrf(request)
        return (credentials.user if principal.via_session else None, principal)

    def authenticate_header(self, request: Request) -> str:
        return WWW_AUTHENTICATE


class HasPrincipal(BasePermission):
    """Passes once ``HumanInputAuthentication`` produced a principal; else 401."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if isinstance(request.auth, Principal):
            return True
        raise exceptions.NotAuthenticated()


class HumanInputAuthenticationScheme(OpenApiAuthenticationExtension):
    """How ``HumanInputAuthentication`` appears in the OpenAPI schema."""

    target_class = HumanInputAuthentication
    name = ["bearer", "tokenQuery"]

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list[Any]]]:
        # Either credential is enough: one requirement each (OR), not one naming both (AND).
        return [{"bearer": []}, {"tokenQuery": []}]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        return [
            {"type": "http", "scheme": "bearer", "description": "HUMANINPUT_API_KEY or a scoped token"},
            {"type": "apiKey", "in": "query", "name": "token", "description": "The same, for EventSource"},
        ]
