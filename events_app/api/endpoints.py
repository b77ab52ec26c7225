"""REST API for requests and tokens: one thin view per operation over ``services``."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import exceptions
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from .. import services
from ..auth import READ, RESPOND, Principal, authorize
from ..exceptions import AlreadyResolved, NotFound, PermissionDenied
from ..models import HumanInputRequest
from ..params import Query
from . import serializers as s
from .base import HumanInputAPIView, document
from .throttling import TokenThrottle, WriteThrottle

ERRORS = {
    400: OpenApiResponse(s.ErrorOutput, description="Invalid input (field errors under `errors`)."),
    401: OpenApiResponse(s.ErrorOutput, description="Missing or invalid credentials."),
    403: OpenApiResponse(s.ErrorOutput, description="Credentials not valid for this execution or action."),
}
# ``services.coerce_request_id`` refuses anything else with a 400.
REQUEST_ID = OpenApiParameter("request_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
WRITE_ERRORS = {
    **ERRORS,
    429: OpenApiResponse(s.ErrorOutput, description="Rate limited; see the Retry-After header."),
}


def require_full_access(principal: Principal) -> None:
    if not principal.is_full_access:
        raise PermissionDenied("This needs the API key or a staff session.")


def get_request(principal: Principal, request_id: str, scope: str) -> HumanInputRequest:
    """The request ``request_id`` if ``principal`` may use ``scope`` on it (else 400/403/404)."""
    uuid = services.coerce_request_id(request_id)
    try:
        found = HumanInputRequest.objects.get(pk=uuid)
    except HumanInputRequest.DoesNotExist:
        raise NotFound() from None
    authorize(principal, execution_id=found.execution_id, scope=scope)
    return found


def conflict_response(error: AlreadyResolved) -> Response:
    body = {**error.as_dict(), "request": s.RequestOutput(error.request).data}
    return Response(body, status=409)


class RequestPagination(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def decode_cursor(self, request: Request) -> Any:
        try:
            cursor = super().decode_cursor(request)
        except exceptions.NotFound:
            cursor = None
        else:
            # Cursors are client-editable base64: a forged position would reach the query.
            if cursor is None or cursor.position is None or _is_datetime(cursor.position):
                return cursor
        raise exceptions.ValidationError({"cursor": ["Invalid cursor."]})


def _is_datetime(value: str) -> bool:
    try:
        return parse_datetime(value) is not None
    except ValueError:
        return False


class RequestListCreateView(HumanInputAPIView):
    """``/api/human-input/requests``: ask a human (POST) or list requests (GET)."""

    def get_throttles(self) -> list[Any]:
        return [WriteThrottle()] if self.request.method == "POST" else []

    @document(
        operation_id="human_input_requests_create",
        request=s.RequestCreateInput,
        responses={201: s.RequestCreatedOutput, **WRITE_ERRORS},
        description="Create a pending request and its `human_input_required` event. Needs full access.",
    )
    def post(self, request: Request) -> Response:
        require_full_access(request.auth)
        data = s.RequestCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        created = services.request_create(**data.validated_data)
        event = created.required_event
        created.event_id, created.sequence = event.event_id, event.sequence
        return Response(s.RequestCreatedOutput(created).data, status=201)

    @document(
        operation_id="human_input_requests_list",
        parameters=[s.RequestListFilters],
        responses={200: s.RequestPageOutput, **ERRORS},
        description="Newest first, cursor-paginated. A scoped token must filter by its execution_id.",
    )
    def get(self, request: Request) -> Response:
        # A plain dict: DRF reads an empty parameter of a QueryDict as absent, but
        # `?execution_id=` is an invalid execution id (400), as on every other endpoint.
        query = Query.of_request(request)
        filters = s.RequestListFilters(
            data={name: query.get(name) for name in ("execution_id", "status") if name in query.values}
        )
        filters.is_valid(raise_exception=True)
        principal: Principal = request.auth
        execution_id = filters.validated_data.get("execution_id")
        if principal.execution_id is not None:
            if execution_id is None:
                raise PermissionDenied("A scoped token must filter by its execution_id.")
            authorize(principal, execution_id=execution_id, scope=READ)
        queryset: QuerySet[HumanInputRequest] = HumanInputRequest.objects.all()
        if execution_id is not None:
            queryset = queryset.filter(execution_id=execution_id)
        if "status" in filters.validated_data:
            queryset = queryset.filter(status=filters.validated_data["status"])
        paginator = RequestPagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(s.RequestOutput(page, many=True).data)


class RequestDetailView(HumanInputAPIView):
    @document(
        operation_id="human_input_requests_retrieve",
        parameters=[REQUEST_ID],
        responses={200: s.RequestOutput, 404: s.ErrorOutput, **ERRORS},
    )
    def get(self, request: Request, request_id: str) -> Response:
        return Response(s.RequestOutput(get_request(request.auth, request_id, READ)).data)


class RequestRespondView(HumanInputAPIView):
    throttle_classes = [WriteThrottle]

    @document(
        operation_id="human_input_requests_respond",
        parameters=[REQUEST_ID],
        request=s.RespondInput,
        responses={200: s.RequestOutput, 404: s.ErrorOutput, 409: s.ConflictOutput, **WRITE_ERRORS},
        description="Answer a pending request. The first answer wins; later ones get 409.",
    )
    def post(self, request: Request, request_id: str) -> Response:
        target = get_request(request.auth, request_id, RESPOND)
        data = s.RespondInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            answered = services.request_respond(
                request_id=target.id,
                response=data.validated_data["response"],
                responded_by=request.auth.name,
            )
        except AlreadyResolved as error:
            return conflict_response(error)
        return Response(s.RequestOutput(answered).data)


class RequestCancelView(HumanInputAPIView):
    throttle_classes = [WriteThrottle]

    @document(
        operation_id="human_input_requests_cancel",
        parameters=[REQUEST_ID],
        request=s.CancelInput,
        responses={200: s.RequestOutput, 404: s.ErrorOutput, 409: s.ConflictOutput, **WRITE_ERRORS},
        description="Withdraw a pending request (`human_input_cancelled`); 409 if it is no longer pending.",
    )
    def post(self, request: Request, request_id: str) -> Response:
        target = get_request(request.auth, request_id, RESPOND)
        s.CancelInput(data=request.data).is_valid(raise_exception=True)
        try:
            cancelled = services.request_cancel(request_id=target.id, cancelled_by=request.auth.name)
        except AlreadyResolved as error:
            return conflict_response(error)
        return Response(s.RequestOutput(cancelled).data)


class TokenCreateView(HumanInputAPIView):
    throttle_classes = [TokenThrottle]

    @document(
        operation_id="tokens_create",
        request=s.TokenInput,
        responses={201: s.TokenOutput, **WRITE_ERRORS},
        description="Mint a signed token for one execution with scope `read` or `respond`. "
        "Needs the API key or a staff session.",
    )
    def post(self, request: Request) -> Response:
        require_full_access(request.auth)
        data = s.TokenInput(data=request.data)
        data.is_valid(raise_exception=True)
        token, record = services.token_issue(
            execution_id=data.validated_data["execution_id"],
            scope=data.validated_data["scope"],
            ttl_seconds=data.validated_data.get("ttl_seconds"),
            issued_by=request.auth.name,
        )
        body = {
            "token": token,
            "token_id": record.token_id,
            "execution_id": record.execution_id,
            "scope": record.scope,
            "expires_at": record.expires_at,
        }
        return Response(s.TokenOutput(body).data, status=201)


class TokenRevokeView(HumanInputAPIView):
    throttle_classes = [TokenThrottle]

    @document(
        operation_id="tokens_revoke",
        request=None,
        responses={200: s.TokenRecordOutput, 404: s.ErrorOutput, **WRITE_ERRORS},
        description="Revoke a scoped token before it expires: every transport refuses it from now on "
        "and connections open with it close at their next catch-up (WebSocket 4401). Idempotent. "
        "Needs the API key or a staff session.",
    )
    def post(self, request: Request, token_id: str) -> Response:
        require_full_access(request.auth)
        record = services.token_revoke(token_id=token_id, revoked_by=request.auth.name)
        return Response(s.TokenRecordOutput(record).data)
